use super::*;

/// A faulty socket in front of a plain one, and the plain peer it sends to.
async fn pair(plan: FaultPlan) -> (Arc<FaultySocket>, FaultControl, tokio::net::UdpSocket) {
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("peer");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).expect("wrap");
    let (faulty, control) = FaultySocket::wrap(inner, plan).expect("faulty");
    (faulty, control, peer)
}

async fn send(socket: &Arc<FaultySocket>, to: SocketAddr, byte: u8) {
    let contents = [byte];
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents: &contents,
        segment_size: None,
        src_ip: None,
    };
    let mut poller = Arc::clone(socket).create_io_poller();
    loop {
        match socket.try_send(&transmit) {
            Ok(()) => return,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                    .await
                    .expect("writable");
            }
            Err(error) => panic!("send: {error}"),
        }
    }
}

/// Every datagram the peer receives until `count` arrived or a quiet second passed.
async fn received(peer: &tokio::net::UdpSocket, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16];
    while out.len() < count {
        match tokio::time::timeout(Duration::from_secs(1), peer.recv(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.push(buf[0]),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn the_same_seed_drops_the_same_datagrams() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (socket, control, peer) = pair(FaultPlan::loss(42, 0.3)).await;
        let to = peer.local_addr().expect("addr");
        for byte in 0..100u8 {
            send(&socket, to, byte).await;
        }
        let got = received(&peer, 100).await;
        assert_eq!(control.stats().dropped as usize, 100 - got.len());
        runs.push(got);
    }
    assert_eq!(runs[0], runs[1], "replayable from the seed");
    assert!(
        runs[0].len() > 50 && runs[0].len() < 90,
        "about 30% lost: {}",
        runs[0].len()
    );
}

#[tokio::test]
async fn a_black_hole_drops_everything_until_lifted() {
    let (socket, control, peer) = pair(FaultPlan::default()).await;
    let to = peer.local_addr().expect("addr");
    control.set_blackhole(true);
    send(&socket, to, 1).await;
    control.set_blackhole(false);
    send(&socket, to, 2).await;
    assert_eq!(received(&peer, 1).await, vec![2]);
    assert_eq!(control.stats().dropped, 1);
}

#[tokio::test]
async fn jitter_reorders_and_duplicates_are_extra_copies() {
    let plan = FaultPlan {
        seed: 7,
        duplicate: 1.0,
        jitter: Duration::from_millis(50),
        ..FaultPlan::default()
    };
    let (socket, control, peer) = pair(plan).await;
    let to = peer.local_addr().expect("addr");
    for byte in 0..20u8 {
        send(&socket, to, byte).await;
    }
    let got = received(&peer, 40).await;
    assert_eq!(got.len(), 40, "every datagram twice");
    assert_ne!(
        got,
        {
            let mut sorted = got.clone();
            sorted.sort();
            sorted
        },
        "reordered"
    );
    assert_eq!(control.stats().duplicated, 20);
}
