//! The ACL file: TOML in, [`Acl`] out, with errors that name the line.
//!
//! ```toml
//! # What applies to a topic no rule mentions: "deny" (the default if omitted) or "allow".
//! default = "deny"
//!
//! [[rule]]
//! identity = ["sensor-*", "spiffe://example.org/sensor/*"]   # a string or a list
//! publish = ["sensors.>"]
//! deny_publish = ["sensors.admin.>"]
//! subscribe = ["commands.*", "sensors.{identity}.>"]  # {identity}: the identity's token
//! deny_subscribe = []
//! queue = ["sensor-workers"]   # queue groups these identities may join (and that others may not)
//! deny_queue = []
//! ```
//!
//! Unknown keys are errors, so a typo (`subscibe`) is not silently ignored. A file with neither
//! a `default` nor a rule is an error too ([`AclError::Empty`]). Topic patterns follow
//! the subscription filter rules (`*` one token, `>` the rest); queue patterns are group names
//! (letters, digits, `-`, `_`, `.`) in which `*` matches any run of characters.

use std::ops::Range;
use std::path::Path;

use cassini_protocol::{TopicError, TopicFilter, TopicLimits};
use serde::Deserialize;
use toml::Spanned;

use super::{Acl, DefaultDecision, GroupPattern, IdentityPattern, Patterns, QueuePatterns, Rule};

/// Bounds on ACL patterns: generous, since the broker's topic limits bound what can match.
const PATTERN_LIMITS: TopicLimits = TopicLimits {
    max_bytes: 4096,
    max_depth: 256,
};

/// Why an ACL file could not be used. The broker keeps its previous ACL when a reload fails.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// The file could not be read.
    #[error("reading ACL file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's error.
        error: String,
    },
    /// The file is not valid TOML, or does not have the ACL's shape.
    #[error("{origin} line {line}: {message}")]
    Syntax {
        /// The file (or `<string>`).
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A topic pattern breaks the filter rules.
    #[error("{origin} line {line}: invalid topic pattern {pattern:?}: {error}")]
    InvalidPattern {
        /// The file (or `<string>`).
        origin: String,
        /// 1-based line of the pattern.
        line: usize,
        /// The pattern as written.
        pattern: String,
        /// The rule it breaks.
        error: TopicError,
    },
    /// A queue-group pattern holds a character no group name can hold, or is empty.
    #[error("{origin} line {line}: invalid queue group pattern {pattern:?}: use letters, digits, '-', '_', '.' and '*'")]
    InvalidQueuePattern {
        /// The file (or `<string>`).
        origin: String,
        /// 1-based line of the pattern.
        line: usize,
        /// The pattern as written.
        pattern: String,
    },
    /// The file has neither a `default` nor a rule. Refused rather than read as "deny
    /// everything", so that a reload catching a file half-written (truncated) by an editor
    /// does not end every live subscription.
    #[error("{origin}: the ACL is empty; write default = \"deny\" to deny everything")]
    Empty {
        /// The file (or `<string>`).
        origin: String,
    },
    /// A rule has an empty identity pattern, or none at all.
    #[error("{origin} line {line}: a rule needs at least one non-empty identity pattern")]
    NoIdentity {
        /// The file (or `<string>`).
        origin: String,
        /// 1-based line of the rule.
        line: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    default: Option<Spanned<DefaultSetting>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DefaultSetting {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    identity: Spanned<OneOrMany>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    deny_publish: Vec<Spanned<String>>,
    #[serde(default)]
    subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    deny_subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    queue: Vec<Spanned<String>>,
    #[serde(default)]
    deny_queue: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Acl {
    /// Parses ACL text; `origin` names it in errors (a path, or `<string>`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, AclError> {
        let file: AclFile = toml::from_str(text).map_err(|error| AclError::Syntax {
            origin: origin.to_owned(),
            line: error.span().map_or(1, |span| line_of(text, &span)),
            message: error.message().to_owned(),
        })?;
        if file.default.is_none() && file.rule.is_empty() {
            return Err(AclError::Empty {
                origin: origin.to_owned(),
            });
        }
        let context = Context { text, origin };
        let default = match file.default.map(Spanned::into_inner) {
            Some(DefaultSetting::Allow) => DefaultDecision::Allow,
            Some(DefaultSetting::Deny) | None => DefaultDecision::Deny,
        };
        let rules = file
            .rule
            .into_iter()
            .map(|rule| context.rule(rule))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            default,
            rules,
            allows_all: false,
        })
    }

    /// Reads and parses the ACL file at `path`.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|error| AclError::Read {
            path: path.display().to_string(),
            error: error.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

struct Context<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Context<'_> {
    fn rule(&self, rule: Spanned<RuleFile>) -> Result<Rule, AclError> {
        let rule = rule.into_inner();
        let line = line_of(self.text, &rule.identity.span());
        let identities = match rule.identity.into_inner() {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        if identities.is_empty() || identities.iter().any(String::is_empty) {
            return Err(AclError::NoIdentity {
                origin: self.origin.to_owned(),
                line,
            });
        }
        Ok(Rule {
            identities: identities.into_iter().map(IdentityPattern::new).collect(),
            publish: Patterns {
                allow: self.patterns(rule.publish)?,
                deny: self.patterns(rule.deny_publish)?,
            },
            subscribe: Patterns {
                allow: self.patterns(rule.subscribe)?,
                deny: self.patterns(rule.deny_subscribe)?,
            },
            queue: QueuePatterns {
                allow: self.group_patterns(rule.queue)?,
                deny: self.group_patterns(rule.deny_queue)?,
            },
        })
    }

    fn group_patterns(
        &self,
        patterns: Vec<Spanned<String>>,
    ) -> Result<Vec<GroupPattern>, AclError> {
        patterns
            .into_iter()
            .map(|pattern| {
                let text = pattern.get_ref();
                let valid = !text.is_empty()
                    && text.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')
                    });
                if valid {
                    Ok(GroupPattern::new(text.clone()))
                } else {
                    Err(AclError::InvalidQueuePattern {
                        origin: self.origin.to_owned(),
                        line: line_of(self.text, &pattern.span()),
                        pattern: text.clone(),
                    })
                }
            })
            .collect()
    }

    fn patterns(&self, patterns: Vec<Spanned<String>>) -> Result<Vec<TopicFilter>, AclError> {
        patterns
            .into_iter()
            .map(|pattern| {
                TopicFilter::parse(pattern.get_ref(), &PATTERN_LIMITS).map_err(|error| {
                    AclError::InvalidPattern {
                        origin: self.origin.to_owned(),
                        line: line_of(self.text, &pattern.span()),
                        pattern: pattern.get_ref().clone(),
                        error,
                    }
                })
            })
            .collect()
    }
}

/// The 1-based line on which `span` starts.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
