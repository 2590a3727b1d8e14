//! MQTT topic names and filters, one to one with Cassini's: `a/b/c` is `a.b.c`, `+` is `*` and
//! `#` is `>`. What has no Cassini form is refused here, before the broker sees it (the table is
//! in docs/MQTT.md): an empty level (`a//b`, `/a`, `a/`), a level holding `.` (Cassini's
//! separator), `*` or `>` (Cassini's wildcards), and a topic starting with `$` (reserved). The
//! broker then checks what is left as it checks a QUIC client's topics (length, depth,
//! characters, the ACL).
//!
//! A shared subscription's filter, `$share/GROUP/FILTER` (MQTT 5 §4.8.2), is a Cassini queue
//! group `GROUP` on the Cassini form of `FILTER`.

/// Why an MQTT topic or filter has no Cassini form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    /// The topic or filter is the empty string.
    #[error("the topic is empty")]
    Empty,
    /// A level is empty: `a//b`, `/a` or `a/`.
    #[error("level {0} is empty (leading, trailing or doubled '/')")]
    EmptyLevel(usize),
    /// A level holds `.`, `*` or `>`, which Cassini reads as a separator or a wildcard.
    #[error("level {level} holds {found:?}, which has no Cassini form")]
    ReservedCharacter {
        /// Zero-based level index.
        level: usize,
        /// The character.
        found: char,
    },
    /// `$` topics are the broker's own.
    #[error("topics starting with '$' are reserved")]
    Dollar,
    /// A wildcard in a published topic, or one that is not a whole level.
    #[error("wildcard '+' or '#' where it is not allowed")]
    Wildcard,
    /// `$share/GROUP/FILTER` whose group is empty or holds a character other than ASCII letters,
    /// digits, `-`, `_` and `.`, or with no filter.
    #[error("a shared subscription is $share/GROUP/FILTER, GROUP of ASCII letters, digits, '-', '_', '.'")]
    SharedName,
}

/// A shared subscription: a Cassini queue group on a Cassini filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// The queue group (MQTT's share name).
    pub group: String,
    /// The Cassini filter.
    pub filter: String,
}

/// The prefix of MQTT's shared subscriptions.
pub const SHARE_PREFIX: &str = "$share/";

/// `Some` if `filter` is a shared subscription's (`$share/GROUP/FILTER`): its queue group and
/// the Cassini form of `FILTER`, or why it has none.
pub fn shared_filter_to_cassini(filter: &str) -> Option<Result<Shared, Unmappable>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, filter)) = rest.split_once('/') else {
        return Some(Err(Unmappable::SharedName));
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if group.is_empty() || !group.bytes().all(allowed) || filter.is_empty() {
        return Some(Err(Unmappable::SharedName));
    }
    Some(filter_to_cassini(filter).map(|filter| Shared {
        group: group.to_string(),
        filter,
    }))
}

/// The MQTT filter of a Cassini filter, shared as queue group `group` if there is one.
pub fn cassini_to_mqtt_filter(filter: &str, group: Option<&str>) -> String {
    match group {
        Some(group) => format!("{SHARE_PREFIX}{group}/{}", cassini_to_mqtt(filter)),
        None => cassini_to_mqtt(filter),
    }
}

/// The Cassini name of the MQTT topic name `topic` (no wildcards).
pub fn topic_to_cassini(topic: &str) -> Result<String, Unmappable> {
    map(topic, false)
}

/// The Cassini filter of the MQTT filter `filter`.
pub fn filter_to_cassini(filter: &str) -> Result<String, Unmappable> {
    map(filter, true)
}

/// The MQTT form of a Cassini topic name or filter. A Cassini token holding `/` has no exact MQTT
/// form and shows as more than one level.
pub fn cassini_to_mqtt(topic: &str) -> String {
    topic
        .split('.')
        .map(|token| match token {
            "*" => "+",
            ">" => "#",
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn map(topic: &str, filter: bool) -> Result<String, Unmappable> {
    if topic.is_empty() {
        return Err(Unmappable::Empty);
    }
    if topic.starts_with('$') {
        return Err(Unmappable::Dollar);
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let last = levels.len() - 1;
    let mut out = Vec::with_capacity(levels.len());
    for (index, level) in levels.iter().enumerate() {
        let token = match *level {
            "" => return Err(Unmappable::EmptyLevel(index)),
            "+" if filter => "*",
            "#" if filter && index == last => ">",
            level if level.contains(['+', '#']) => return Err(Unmappable::Wildcard),
            level => {
                if let Some(found) = level.chars().find(|c| matches!(c, '.' | '*' | '>')) {
                    return Err(Unmappable::ReservedCharacter {
                        level: index,
                        found,
                    });
                }
                level
            }
        };
        out.push(token);
    }
    Ok(out.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_level_for_token() {
        assert_eq!(topic_to_cassini("a/b/c").as_deref(), Ok("a.b.c"));
        assert_eq!(topic_to_cassini("sensors").as_deref(), Ok("sensors"));
        assert_eq!(cassini_to_mqtt("a.b.c"), "a/b/c");
    }

    #[test]
    fn filters_map_wildcards() {
        assert_eq!(filter_to_cassini("a/+/c").as_deref(), Ok("a.*.c"));
        assert_eq!(filter_to_cassini("a/#").as_deref(), Ok("a.>"));
        assert_eq!(filter_to_cassini("#").as_deref(), Ok(">"));
        assert_eq!(filter_to_cassini("+").as_deref(), Ok("*"));
        assert_eq!(cassini_to_mqtt("a.*.>"), "a/+/#");
    }

    #[test]
    fn what_has_no_cassini_form_is_refused() {
        assert_eq!(topic_to_cassini(""), Err(Unmappable::Empty));
        assert_eq!(topic_to_cassini("a//b"), Err(Unmappable::EmptyLevel(1)));
        assert_eq!(topic_to_cassini("/a"), Err(Unmappable::EmptyLevel(0)));
        assert_eq!(topic_to_cassini("a/"), Err(Unmappable::EmptyLevel(1)));
        assert_eq!(
            topic_to_cassini("a/b.c"),
            Err(Unmappable::ReservedCharacter {
                level: 1,
                found: '.'
            })
        );
        assert!(matches!(
            filter_to_cassini("a/*"),
            Err(Unmappable::ReservedCharacter { found: '*', .. })
        ));
        assert!(matches!(
            topic_to_cassini("a/x>y"),
            Err(Unmappable::ReservedCharacter { found: '>', .. })
        ));
        assert_eq!(topic_to_cassini("$SYS/x"), Err(Unmappable::Dollar));
        assert_eq!(filter_to_cassini("$share/g/a"), Err(Unmappable::Dollar));
        assert_eq!(topic_to_cassini("a/+"), Err(Unmappable::Wildcard));
        assert_eq!(topic_to_cassini("a/#"), Err(Unmappable::Wildcard));
        assert_eq!(filter_to_cassini("a/#/b"), Err(Unmappable::Wildcard));
        assert_eq!(filter_to_cassini("a/b+"), Err(Unmappable::Wildcard));
    }

    #[test]
    fn shared_subscriptions_are_queue_groups() {
        let shared = |filter: &str| shared_filter_to_cassini(filter);
        assert_eq!(
            shared("$share/workers/jobs/+"),
            Some(Ok(Shared {
                group: "workers".into(),
                filter: "jobs.*".into()
            }))
        );
        assert_eq!(shared("jobs/+"), None);
        assert_eq!(shared("$share/workers"), Some(Err(Unmappable::SharedName)));
        assert_eq!(shared("$share//jobs"), Some(Err(Unmappable::SharedName)));
        assert_eq!(shared("$share/a+b/jobs"), Some(Err(Unmappable::SharedName)));
        assert_eq!(shared("$share/g/"), Some(Err(Unmappable::SharedName)));
        assert_eq!(
            shared("$share/g/a//b"),
            Some(Err(Unmappable::EmptyLevel(1)))
        );
        assert_eq!(
            cassini_to_mqtt_filter("jobs.*", Some("workers")),
            "$share/workers/jobs/+"
        );
        assert_eq!(cassini_to_mqtt_filter("jobs.>", None), "jobs/#");
    }
}
