//! What a scrubber keeps, scans, pseudonymises and drops.

use std::collections::BTreeMap;

use super::denylist::Denylist;

/// What happens to a span a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Replacement {
    /// The string holding it is removed (from its object or array).
    Drop,
    /// The span becomes a label such as `[email]` or `[card]`.
    #[default]
    Mask,
    /// The span becomes its tenant-keyed pseudonym, `pn:v<version>:<32 hex digits>`.
    Pseudonymise,
}

/// The rule for one allowlisted top-level metadata field of one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldRule {
    /// Stored as it is: no detectors (denylisted keys and denied name/value pairs inside it
    /// are still removed).
    Keep,
    /// The detectors run over it, as over unknown fields.
    Scan,
    /// Every string and number in it becomes its pseudonym.
    Pseudonymise,
    /// Removed.
    Drop,
}

/// What happens to top-level fields that are not on the action's allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownFields {
    /// The detectors run over them.
    #[default]
    Scan,
    /// They are removed ("allowlist mode").
    Drop,
}

/// A scrubbing policy: replacement, per-action allowlist, extra denylisted keys.
///
/// ```
/// use audit_log::scrub::{FieldRule, Replacement, ScrubPolicy, UnknownFields};
///
/// let policy = ScrubPolicy::new()
///     .with_unknown_fields(UnknownFields::Drop)
///     .allow("role.grant", "role", FieldRule::Keep)
///     .allow("role.grant", "grantee_email", FieldRule::Pseudonymise)
///     .deny_key("date_of_birth");
/// assert_eq!(policy.rule("role.grant", "role"), Some(FieldRule::Keep));
/// assert!(policy.denies_key("userDateOfBirth"));
/// assert!(policy.denies_key("X-Api-Key"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ScrubPolicy {
    pub(super) replacement: Replacement,
    pub(super) unknown_fields: UnknownFields,
    pub(super) fields: BTreeMap<String, BTreeMap<String, FieldRule>>,
    pub(super) denylist: Denylist,
}

impl ScrubPolicy {
    /// [`Replacement::Mask`], [`UnknownFields::Scan`], the built-in denylist, no allowlist.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What detected spans become.
    #[must_use]
    pub fn with_replacement(mut self, replacement: Replacement) -> Self {
        self.replacement = replacement;
        self
    }

    /// What happens to fields not on the action's allowlist.
    #[must_use]
    pub fn with_unknown_fields(mut self, unknown: UnknownFields) -> Self {
        self.unknown_fields = unknown;
        self
    }

    /// The rule for the top-level metadata field `field` of events with action `action`
    /// (both matched exactly). A denylisted key is removed whatever its rule.
    #[must_use]
    pub fn allow(mut self, action: &str, field: &str, rule: FieldRule) -> Self {
        self.fields
            .entry(action.to_owned())
            .or_default()
            .insert(field.to_owned(), rule);
        self
    }

    /// Denies one more key, at any depth: keys that contain it, compared in lowercase with
    /// everything but letters and digits removed (`date_of_birth` also denies
    /// `userDateOfBirth`).
    #[must_use]
    pub fn deny_key(mut self, key: &str) -> Self {
        self.denylist.add(key);
        self
    }

    /// The replacement for detected spans.
    #[must_use]
    pub fn replacement(&self) -> Replacement {
        self.replacement
    }

    /// What happens to fields not on an action's allowlist.
    #[must_use]
    pub fn unknown_fields(&self) -> UnknownFields {
        self.unknown_fields
    }

    /// The allowlist rule for a top-level field of an action, if any.
    #[must_use]
    pub fn rule(&self, action: &str, field: &str) -> Option<FieldRule> {
        self.fields.get(action)?.get(field).copied()
    }

    /// Whether the denylist removes this key (built-in words and [`ScrubPolicy::deny_key`]).
    #[must_use]
    pub fn denies_key(&self, key: &str) -> bool {
        self.denylist.is_denied(key)
    }

    /// Whether anything in the policy needs a pseudonym key.
    pub(super) fn pseudonymises(&self) -> bool {
        self.replacement == Replacement::Pseudonymise
            || self
                .fields
                .values()
                .flat_map(BTreeMap::values)
                .any(|rule| *rule == FieldRule::Pseudonymise)
    }
}
