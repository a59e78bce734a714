//! Tool names: exact, ASCII, lowercase. A name that merely looks like a registered one is unknown.

use std::fmt;

use crate::SandboxError;

/// The longest tool name, in bytes.
pub const MAX_TOOL_NAME: usize = 64;

/// A validated tool name: `[a-z][a-z0-9_]*`, at most [`MAX_TOOL_NAME`] bytes.
///
/// The grammar is deliberately narrow. Names are compared byte for byte, so `Send_Email`,
/// `send_emaіl` (with a Cyrillic `і`) or a full-width `ｓend_email` can never reach the tool
/// called `send_email`: they are not even valid names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ToolName(Box<str>);

impl ToolName {
    /// Parses `name`.
    ///
    /// # Errors
    /// [`SandboxError::InvalidToolName`] outside the grammar.
    pub fn parse(name: &str) -> Result<Self, SandboxError> {
        if is_valid(name) {
            Ok(Self(name.into()))
        } else {
            Err(SandboxError::InvalidToolName)
        }
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(name: &str) -> bool {
    name.len() <= MAX_TOOL_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl fmt::Debug for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A folded form of a requested name (NFKC, lowercase, only ASCII letters and digits kept), used
/// only to *report* that an unknown name imitates a registered one. It never makes a call match.
pub(crate) fn skeleton(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.chars()
        .take(4 * MAX_TOOL_NAME)
        .nfkc()
        .flat_map(char::to_lowercase)
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_narrow_grammar_parses() {
        for good in ["send_email", "a", "fetch_url2"] {
            assert!(ToolName::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_TOOL_NAME + 1);
        for bad in [
            "",
            "Send_email",
            "send-email",
            "send email",
            "send_emaіl",
            "ｓend_email",
            "_x",
            "1x",
            "send_email\u{200b}",
            long.as_str(),
        ] {
            assert!(ToolName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn skeletons_fold_case_width_and_separators() {
        assert_eq!(skeleton("SEND_EMAIL"), skeleton("send_email"));
        assert_eq!(skeleton("ｓｅｎｄ＿ｅｍａｉｌ"), skeleton("send_email"));
        assert_eq!(skeleton("send-email"), "sendemail");
    }
}
