//! A network namespace joined to the test's by a veth pair, for the tests that cut a node off
//! with a real link going down (`ip link set down`). Needs root and `ip netns`: [`Island::create`]
//! says why it cannot, for the test to skip with. It touches nothing outside the namespace and
//! the veth pair it makes, deleted on drop.

use super::ip;

/// The test's side of the veth pair.
pub(crate) const HOST_IP: &str = "10.214.7.1";
/// The island's side.
pub(crate) const ISLAND_IP: &str = "10.214.7.2";

/// A namespace joined to this one by a veth pair; deleted (with the pair) on drop.
pub(crate) struct Island {
    /// The namespace's name.
    pub(crate) namespace: String,
    /// The island's end of the veth pair.
    link: String,
}

impl Island {
    /// Creates it, or says why this machine cannot.
    pub(crate) fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let island = Self {
            namespace: format!("cas-i{id}"),
            link: format!("cvi{id}"),
        };
        let host_link = format!("cvh{id}");
        ip(&["netns", "add", &island.namespace])?;
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &island.link,
            "netns",
            &island.namespace,
        ])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        island.exec_ip(&[
            "addr",
            "add",
            &format!("{ISLAND_IP}/30"),
            "dev",
            &island.link,
        ])?;
        island.exec_ip(&["link", "set", &island.link, "up"])?;
        island.exec_ip(&["link", "set", "lo", "up"])?;
        Ok(island)
    }

    fn exec_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", &self.namespace, "ip"];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip link set LINK up|down` on the island's side.
    pub(crate) fn set_link(&self, up: bool) {
        self.exec_ip(&["link", "set", &self.link, if up { "up" } else { "down" }])
            .expect("set the link");
    }

    /// The wrapper that runs a program inside the island.
    pub(crate) fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.namespace]
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}
