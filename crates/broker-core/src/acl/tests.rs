#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cassini_protocol::TopicLimits;

use super::*;

fn topic(t: &str) -> TopicName {
    TopicName::parse(t, &TopicLimits::default()).unwrap()
}

fn filter(f: &str) -> TopicFilter {
    TopicFilter::parse(f, &TopicLimits::default()).unwrap()
}

const EXAMPLE: &str = r#"
default = "deny"

[[rule]]
identity = ["sensor-*", "spiffe://example.org/sensor/*"]
publish = ["sensors.>"]
deny_publish = ["sensors.admin.>"]
subscribe = ["commands.*"]

[[rule]]
identity = "ops"
subscribe = ["sensors.>", "$SYS.>"]
deny_subscribe = ["sensors.secret.>"]
"#;

#[test]
fn identity_patterns_match_exactly_or_with_stars() {
    let p = IdentityPattern::new("sensor-*");
    assert!(p.matches("sensor-1"));
    assert!(p.matches("sensor-"));
    assert!(!p.matches("sensor"));
    assert!(!p.matches("xsensor-1"));
    assert!(IdentityPattern::new("*").matches("anything"));
    assert!(IdentityPattern::new("a*b*c").matches("aXXbYYc"));
    assert!(!IdentityPattern::new("a*b*c").matches("aXXbYY"));
    assert!(IdentityPattern::new("alice").matches("alice"));
    assert!(!IdentityPattern::new("alice").matches("alice2"));
}

#[test]
fn publish_follows_deny_then_allow_then_default() {
    let acl = Acl::parse(EXAMPLE, "<test>").unwrap();
    assert!(acl.may_publish("sensor-7", &topic("sensors.t.1")));
    assert!(acl.may_publish("spiffe://example.org/sensor/a", &topic("sensors.t.1")));
    assert!(!acl.may_publish("sensor-7", &topic("sensors.admin.reboot")));
    assert!(!acl.may_publish("sensor-7", &topic("commands.x")));
    assert!(!acl.may_publish("stranger", &topic("sensors.t.1")));
    assert!(!acl.may_publish("ops", &topic("sensors.t.1")));
}

#[test]
fn a_subscription_must_be_covered_by_an_allow_and_touch_no_deny() {
    let acl = Acl::parse(EXAMPLE, "<test>").unwrap();
    assert!(acl.may_subscribe("sensor-1", &filter("commands.reboot")));
    assert!(acl.may_subscribe("sensor-1", &filter("commands.*")));
    assert!(!acl.may_subscribe("sensor-1", &filter("commands.>")));
    assert!(!acl.may_subscribe("sensor-1", &filter("commands.a.b")));
    assert!(acl.may_subscribe("ops", &filter("sensors.public.>")));
    assert!(
        !acl.may_subscribe("ops", &filter("sensors.>")),
        "would see secrets"
    );
    assert!(
        !acl.may_subscribe("ops", &filter("sensors.*.x")),
        "overlaps secret.x"
    );
    assert!(!acl.may_subscribe("ops", &filter("sensors.secret.a")));
    assert!(acl.may_subscribe("ops", &filter("$SYS.broker.load")));
}

#[test]
fn system_topics_need_an_explicit_literal_allow() {
    let open = Acl::parse("default = \"allow\"", "<test>").unwrap();
    assert!(open.may_subscribe("anyone", &filter("orders.>")));
    assert!(!open.may_subscribe("anyone", &filter("$SYS.>")));
    let wildcard = Acl::parse(
        "[[rule]]\nidentity = \"*\"\nsubscribe = [\">\", \"*.x\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(wildcard.may_subscribe("a", &filter("orders.x")));
    assert!(!wildcard.may_subscribe("a", &filter("$SYS.x")));
    assert!(wildcard.may_subscribe("a", &filter("*.x")));
    assert!(Acl::allow_all().may_subscribe("a", &filter("a.b")));
    assert!(!Acl::allow_all().may_subscribe("a", &filter("$SYS.x")));
}

#[test]
fn the_default_applies_where_no_pattern_speaks() {
    let acl = Acl::parse(
        "default = \"allow\"\n[[rule]]\nidentity = \"bob\"\ndeny_publish = [\"secret.>\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(acl.may_publish("bob", &topic("public.x")));
    assert!(!acl.may_publish("bob", &topic("secret.x")));
    assert!(acl.may_publish("alice", &topic("secret.x")));
    let closed = Acl::parse("[[rule]]\nidentity = \"bob\"\n", "<test>").unwrap();
    assert_eq!(closed.default, DefaultDecision::Deny, "deny when omitted");
    assert!(!closed.may_publish("alice", &topic("x")));
    assert!(!closed.may_publish("bob", &topic("x")));
}

#[test]
fn covers_and_overlaps_agree_with_matching() {
    let cases = [
        ("a.>", "a.b", true, true),
        ("a.>", "a.>", true, true),
        ("a.>", "a", false, false),
        ("a.*", "a.>", false, true),
        ("a.*", "a.b", true, true),
        ("*.b", "a.*", false, true),
        ("a.b", "a.c", false, false),
        (">", "x.y.z", true, true),
        ("a.*.c", "a.b.>", false, true),
    ];
    for (pattern, sub, covered, overlapping) in cases {
        assert_eq!(
            covers(&filter(pattern), &filter(sub)),
            covered,
            "{pattern} covers {sub}"
        );
        assert_eq!(
            overlaps(&filter(pattern), &filter(sub)),
            overlapping,
            "{pattern} overlaps {sub}"
        );
        assert_eq!(
            overlaps(&filter(sub), &filter(pattern)),
            overlapping,
            "overlap is symmetric"
        );
    }
}

#[test]
fn errors_name_the_line() {
    let err = Acl::parse(
        "default = \"deny\"\n\n[[rule]]\nidentity = \"a\"\nsubscibe = [\"x\"]\n",
        "acl.toml",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("acl.toml line "), "{text}");
    assert!(text.contains("subscibe"), "{text}");

    let err = Acl::parse(
        "[[rule]]\nidentity = \"a\"\npublish = [\n  \"ok\",\n  \"bad.>.x\",\n]\n",
        "acl.toml",
    )
    .unwrap_err();
    assert!(
        matches!(err, AclError::InvalidPattern { line: 5, .. }),
        "{err}"
    );

    for empty in ["", "  \n# nothing but a comment\n"] {
        let err = Acl::parse(empty, "acl.toml").unwrap_err();
        assert!(matches!(err, AclError::Empty { .. }), "{err}");
    }

    let err = Acl::parse("x = [", "acl.toml").unwrap_err();
    assert!(matches!(err, AclError::Syntax { line: 1, .. }), "{err}");

    let err = Acl::parse("default = \"maybe\"", "acl.toml").unwrap_err();
    assert!(matches!(err, AclError::Syntax { .. }), "{err}");

    let err = Acl::parse("\n[[rule]]\nidentity = []\n", "acl.toml").unwrap_err();
    assert!(matches!(err, AclError::NoIdentity { line: 3, .. }), "{err}");
}

#[test]
fn a_permission_cache_follows_a_replaced_acl() {
    let handle = AclHandle::new(Acl::parse(EXAMPLE, "<test>").unwrap());
    let mut cache = PermissionCache::new(&handle, "sensor-1");
    assert!(cache
        .get(&handle, "sensor-1")
        .may_publish(&topic("sensors.a")));
    handle.replace(Acl::parse("default = \"deny\"", "<test>").unwrap());
    assert!(!cache
        .get(&handle, "sensor-1")
        .may_publish(&topic("sensors.a")));
}

#[test]
fn a_remembered_publish_verdict_does_not_outlive_its_acl() {
    let handle = AclHandle::new(Acl::parse(EXAMPLE, "<test>").unwrap());
    let mut cache = PermissionCache::new(&handle, "sensor-1");
    let allowed = topic("sensors.a");
    assert!(cache.may_publish(&handle, "sensor-1", &allowed));
    assert!(
        cache.may_publish(&handle, "sensor-1", &allowed),
        "asked again"
    );
    assert!(!cache.may_publish(&handle, "sensor-1", &topic("sensors.admin.reboot")));
    assert!(
        cache.may_publish(&handle, "sensor-1", &allowed),
        "after another topic"
    );
    handle.replace(Acl::parse("default = \"deny\"", "<test>").unwrap());
    assert!(!cache.may_publish(&handle, "sensor-1", &allowed));
}

#[test]
fn every_identity_may_read_its_own_inboxes_only() {
    let open = Acl::allow_all();
    assert!(open.may_subscribe("alice", &filter("_INBOX.alice.0123.>")));
    assert!(open.may_subscribe("alice", &filter("_INBOX.alice.>")));
    assert!(!open.may_subscribe("bob", &filter("_INBOX.alice.>")));
    assert!(!open.may_subscribe("bob", &filter("_INBOX.>")));
    assert!(!open.may_subscribe("bob", &filter("_INBOX.*.x.>")));
    assert!(
        open.may_subscribe("bob", &filter(">")),
        "a leading wildcard never reaches an inbox, so it is harmless"
    );
    // Identities that are not one token are encoded into one.
    let uri = "spiffe://x.org/y";
    assert!(open.may_subscribe(uri, &filter("_INBOX.spiffe%3A%2F%2Fx%2Eorg%2Fy.7.>")));
    assert!(!open.may_subscribe("spiffe://x", &filter("_INBOX.spiffe%3A%2F%2Fx%2Eorg%2Fy.>")));

    let closed = Acl::parse("default = \"deny\"", "<test>").unwrap();
    assert!(closed.may_subscribe("alice", &filter("_INBOX.alice.1.>")));
    let denied = Acl::parse(
        "[[rule]]\nidentity = \"alice\"\ndeny_subscribe = [\"_INBOX.>\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(
        !denied.may_subscribe("alice", &filter("_INBOX.alice.1.>")),
        "a deny wins"
    );
    let wide = Acl::parse(
        "[[rule]]\nidentity = \"audit\"\nsubscribe = [\"_INBOX.>\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(
        wide.may_subscribe("audit", &filter("_INBOX.alice.>")),
        "said otherwise"
    );
}

#[test]
fn identity_in_a_pattern_is_the_identity_token() {
    let acl = Acl::parse(
        "[[rule]]\nidentity = \"*\"\npublish = [\"users.{identity}.>\"]\nsubscribe = [\"inbox-{identity}.>\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(acl.may_publish("alice", &topic("users.alice.x")));
    assert!(!acl.may_publish("alice", &topic("users.bob.x")));
    assert!(acl.may_publish("a.b", &topic("users.a%2Eb.x")));
    assert!(!acl.may_publish("a.b", &topic("users.a.b.x")));
    assert!(acl.may_subscribe("bob", &filter("inbox-bob.>")));
    assert!(!acl.may_subscribe("bob", &filter("inbox-alice.>")));
}

#[test]
fn reply_to_must_be_a_topic_the_requester_may_receive() {
    let acl = Acl::parse(
        "[[rule]]\nidentity = \"eve\"\npublish = [\"eve.>\", \"svc.echo\"]\nsubscribe = [\"eve.>\"]\n",
        "<test>",
    )
    .unwrap();
    assert!(acl.may_receive("eve", &topic("_INBOX.eve.1.2")));
    assert!(acl.may_receive("eve", &topic("eve.replies")));
    assert!(!acl.may_receive("eve", &topic("svc.admin.shutdown")));
    assert!(!acl.may_receive("eve", &topic("_INBOX.alice.1.2")));
    let open = Acl::allow_all();
    assert!(open.may_receive("eve", &topic("svc.admin.shutdown")));
    assert!(!open.may_receive("eve", &topic("_INBOX.alice.1.2")));
}

#[test]
fn a_queue_group_named_in_a_rule_is_reserved() {
    let acl = Acl::parse(
        r#"
[[rule]]
identity = "svc"
subscribe = ["orders.>"]
queue = ["workers", "billing-*"]

[[rule]]
identity = "bob"
subscribe = ["orders.>"]
deny_queue = ["audit"]
"#,
        "<test>",
    )
    .unwrap();
    assert!(acl.may_join_queue("svc", "workers"));
    assert!(acl.may_join_queue("svc", "billing-eu"));
    assert!(!acl.may_join_queue("bob", "workers"), "reserved for svc");
    assert!(!acl.may_join_queue("bob", "billing-eu"));
    assert!(acl.may_join_queue("bob", "bobs-own"), "no rule names it");
    assert!(!acl.may_join_queue("bob", "audit"), "denied");
    assert!(Acl::allow_all().may_join_queue("anyone", "workers"));
    let err = Acl::parse(
        "[[rule]]\nidentity = \"a\"\nqueue = [\"a b\"]\n",
        "acl.toml",
    )
    .unwrap_err();
    assert!(
        matches!(err, AclError::InvalidQueuePattern { line: 3, .. }),
        "{err}"
    );
}

#[test]
fn the_acl_example_in_security_md_is_valid_and_means_what_it_says() {
    let doc = include_str!("../../../../docs/SECURITY.md");
    let section = doc
        .split("## Authorization: the ACL file")
        .nth(1)
        .expect("the ACL section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML example");
    let acl = Acl::parse(example, "SECURITY.md").unwrap();
    assert!(acl.may_subscribe("svc-a", &filter("svc.echo")));
    assert!(acl.may_publish("svc-a", &topic("_INBOX.alice.1.2")));
    assert!(acl.may_join_queue("svc-a", "svc-workers"));
    assert!(!acl.may_join_queue("ops", "svc-workers"));
    assert!(acl.may_subscribe("ops", &filter("_INBOX.ops.x.>")));
    assert!(!acl.may_subscribe("svc-a", &filter("_INBOX.ops.>")));
    assert!(acl.may_publish("ops", &topic("users.ops.note")));
    assert!(!acl.may_publish("ops", &topic("users.alice.note")));
}
