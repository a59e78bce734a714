//! The key denylist: keys whose values are never stored, at any depth.
//!
//! Keys are compared by their confusable skeleton (Unicode TS #39, from `unicode-security`), so
//! `pаssword` with a Cyrillic `а`, fullwidth `ｐａｓｓｗｏｒｄ` and `passw0rd` are the same key as
//! `password`.

use std::sync::LazyLock;

/// Matched anywhere in the compacted key (lowercase, letters and digits only).
const SUBSTRINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "cookie",
    "credential",
    "creds",
    "apikey",
    "privatekey",
    "accesskey",
    "accountkey",
    "authkey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "sessionid",
    "sessionkey",
    "recoverycode",
    "backupcode",
    "creditcard",
    "cardnumber",
    "securitycode",
    "socialsecurity",
    "seedphrase",
    "mnemonic",
    "connectionstring",
    "bearer",
    "jwt",
    "csrf",
    "xsrf",
];

/// Matched only as a whole word of the key: as substrings these would hit ordinary words
/// (`otp` in `footprint`, `ssn` in `businessName`, `pin` in `shipping`).
const WORDS: &[&str] = &[
    "pwd", "pw", "pass", "otp", "totp", "hotp", "pin", "ssn", "cvv", "cvc", "cvv2", "cvc2", "sid",
    "dsn", "auth",
];

/// Denied only when they are the whole key.
const EXACT: &[&str] = &["key"];

/// The built-in lists, compacted once (see [`compact`]).
struct Compacted {
    substrings: Vec<String>,
    words: Vec<String>,
    exact: Vec<String>,
    authorization: String,
    cookie: String,
    auth: String,
}

static COMPACTED: LazyLock<Compacted> = LazyLock::new(|| {
    let all = |list: &[&str]| list.iter().map(|w| compact(w)).collect();
    Compacted {
        substrings: all(SUBSTRINGS),
        words: all(WORDS),
        exact: all(EXACT),
        authorization: compact("authorization"),
        cookie: compact("cookie"),
        auth: compact("auth"),
    }
});

/// The built-in denylist plus the keys a policy adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Denylist {
    extra: Vec<String>,
}

impl Denylist {
    /// Adds a key, matched (compacted) as a substring like the built-in words.
    pub(super) fn add(&mut self, key: &str) {
        let key = compact(key);
        if !key.is_empty() && !self.extra.contains(&key) {
            self.extra.push(key);
        }
    }

    /// Whether a key's value must never be stored.
    pub(super) fn is_denied(&self, key: &str) -> bool {
        let builtin = &*COMPACTED;
        let compacted = compact(key);
        builtin
            .substrings
            .iter()
            .any(|w| compacted.contains(w.as_str()))
            || builtin.exact.contains(&compacted)
            || self.extra.iter().any(|w| compacted.contains(w.as_str()))
            || words(key)
                .iter()
                .any(|w| builtin.words.contains(&compact(w)))
    }
}

/// Member names that hold the *name* of a name/value pair object (compacted as keys are):
/// `{"name": "password", "value": "x"}` (HAR headers, form fields), `{"key": .., "value": ..}`
/// (tag and config lists), `{"type": "password", "value": ..}` (HTML form fields).
const PAIR_NAMES: &[&str] = &[
    "name",
    "key",
    "field",
    "fieldname",
    "header",
    "headername",
    "param",
    "parameter",
    "paramname",
    "attribute",
    "property",
    "label",
    "type",
    "k",
];

/// Member names that hold the *value* of a name/value pair object.
const PAIR_VALUES: &[&str] = &[
    "value",
    "values",
    "val",
    "v",
    "content",
    "contents",
    "data",
    "text",
    "input",
    "answer",
    "default",
    "defaultvalue",
    "fieldvalue",
    "headervalue",
];

static PAIR_MEMBERS: LazyLock<(Vec<String>, Vec<String>)> = LazyLock::new(|| {
    let all = |list: &[&str]| list.iter().map(|w| compact(w)).collect();
    (all(PAIR_NAMES), all(PAIR_VALUES))
});

impl Denylist {
    /// Whether `value` is a name/value pair whose name is denied, judged as if the name were an
    /// object key (the pair is then removed whole, like a denied key and its value):
    ///
    /// - a two-element array whose first element is a denied string that can be a name
    ///   (see [`looks_like_name`]): `["password", "x"]`, `["Authorization", "Bearer …"]`;
    /// - an object with a name member ([`PAIR_NAMES`]) holding a denied string and a value
    ///   member ([`PAIR_VALUES`]): `{"name": "password", "value": "x"}`.
    pub(super) fn is_denied_pair(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::Array(items) => match items.as_slice() {
                [Value::String(name), _] => looks_like_name(name) && self.is_denied(name),
                _ => false,
            },
            Value::Object(fields) => {
                let (names, values) = &*PAIR_MEMBERS;
                let mut denied_name = false;
                let mut has_value = false;
                for (member, inner) in fields {
                    let member = compact(member);
                    if let Value::String(name) = inner
                        && names.contains(&member)
                        && self.is_denied(name)
                    {
                        denied_name = true;
                    }
                    has_value |= values.contains(&member);
                }
                denied_name && has_value
            }
            _ => false,
        }
    }

    /// For a flat list of strings of even length (`["Host", "example.com", "Cookie", "a=1"]`,
    /// Node's `rawHeaders`), whether the element at `index` is removed: a denied name at an
    /// even index, or the value after it. Other arrays: never.
    pub(super) fn flat_pairs_removed(&self, items: &[serde_json::Value]) -> Vec<bool> {
        use serde_json::Value;
        let mut removed = vec![false; items.len()];
        if items.len() < 4 || !items.len().is_multiple_of(2) || !items.iter().all(Value::is_string)
        {
            return removed;
        }
        for (i, pair) in items.chunks_exact(2).enumerate() {
            if let Some(Value::String(name)) = pair.first()
                && looks_like_name(name)
                && self.is_denied(name)
            {
                removed[2 * i] = true;
                removed[2 * i + 1] = true;
            }
        }
        removed
    }
}

/// Whether the first string of an array can be a name (a header or form field name) rather
/// than text: at most 64 bytes, at most two spaces, no other white space or control
/// characters and none of `: = ; , ? & @ /` (which mark a header line, a URL or a sentence:
/// `["Authorization: Bearer …", "x"]` and `["retried with bearer …", "x"]` are two texts, each
/// scanned, not a pair).
fn looks_like_name(text: &str) -> bool {
    text.len() <= 64
        && text.chars().filter(|&c| c == ' ').count() <= 2
        && !text
            .chars()
            .any(|c| (c.is_whitespace() && c != ' ') || c.is_control() || ":=;,?&@/".contains(c))
}

/// Whether the value after this key in free text is a header value that runs to the end of
/// the line (`Authorization: Digest a=1, b=2`, `Cookie: a=1; b=2`).
pub(super) fn is_header_like(key: &str) -> bool {
    let builtin = &*COMPACTED;
    let compacted = compact(key);
    compacted.contains(builtin.authorization.as_str())
        || compacted.contains(builtin.cookie.as_str())
        || words(key).iter().any(|w| compact(w) == builtin.auth)
}

/// The form keys are compared in: lowercased, mapped to its confusable skeleton (Unicode TS
/// #39: NFD, default-ignorable code points removed, each character replaced by its prototype),
/// lowercased again, letters and digits only. `X-Auth_Token` → `xauthtoken`; a Cyrillic `а`,
/// a fullwidth `ａ` and a Latin `a` give the same result. Both sides of every comparison go
/// through it, so prototypes that are not the letter itself (`m` → `rn`) cancel out.
pub(super) fn compact(key: &str) -> String {
    let lowered: String = key.chars().flat_map(char::to_lowercase).collect();
    unicode_security::skeleton(&lowered)
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// The lowercase words of a key, split at non-alphanumerics and camelCase humps
/// (`userPIN` → `user`, `pin`; `OTPCode` → `otp`, `code`).
fn words(key: &str) -> Vec<String> {
    let chars: Vec<char> = key.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut prev: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev = None;
            continue;
        }
        if c.is_uppercase() && !current.is_empty() {
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let hump = prev.is_some_and(|p| {
                p.is_lowercase() || p.is_numeric() || (p.is_uppercase() && next_lower)
            });
            if hump {
                out.push(std::mem::take(&mut current));
            }
        }
        current.extend(c.to_lowercase());
        prev = Some(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_at_separators_and_humps() {
        assert_eq!(words("userPIN"), ["user", "pin"]);
        assert_eq!(words("OTPCode"), ["otp", "code"]);
        assert_eq!(words("X-Auth_Token"), ["x", "auth", "token"]);
        assert_eq!(words("XAuthToken"), ["x", "auth", "token"]);
        assert_eq!(words("cvv2"), ["cvv2"]);
        assert_eq!(words("__"), Vec::<String>::new());
    }

    #[test]
    fn denies_credential_keys_in_every_spelling() {
        let deny = Denylist::default();
        for key in [
            "password",
            "X-Auth-Token",
            "user_password",
            "sessionCookie",
            "awsSecretAccessKey",
            "api-key",
            "apiKey",
            "API_KEY",
            "Authorization",
            "proxy-authorization",
            "private_key",
            "client_secret",
            "passwd",
            "pwd",
            "db_pw",
            "otp",
            "totp",
            "OTPCode",
            "recovery_code",
            "ssn",
            "userSSN",
            "set-cookie",
            "credential",
            "credentials",
            "pin",
            "card_number",
            "key",
            "session_id",
            "connection string",
            "x-csrf-token",
            "tokens_used",
        ] {
            assert!(deny.is_denied(key), "{key} should be denied");
        }
    }

    #[test]
    fn keeps_ordinary_keys_that_contain_short_words() {
        let deny = Denylist::default();
        for key in [
            "footprint",
            "businessName",
            "shipping",
            "author",
            "passport_country",
            "bypass",
            "keyboard",
            "key_id",
            "primary_key_column",
            "email",
            "phone",
            "ip",
            "user_agent",
            "description",
        ] {
            assert!(!deny.is_denied(key), "{key} should be kept");
        }
    }

    #[test]
    fn confusable_spellings_are_denied() {
        let deny = Denylist::default();
        for key in [
            "p\u{430}ssword",                                                   // Cyrillic a
            "\u{FF50}\u{FF41}\u{FF53}\u{FF53}\u{FF57}\u{FF4F}\u{FF52}\u{FF44}", // fullwidth
            "passw0rd",
            "pass\u{200B}word", // zero-width space
            "\u{1D429}\u{1D41A}\u{1D42C}\u{1D42C}\u{1D430}\u{1D428}\u{1D42B}\u{1D41D}", // bold
            "T\u{43E}ken",      // Cyrillic o
            "\u{3C1}in",        // Greek rho for p
            "mnemonic",
        ] {
            assert!(deny.is_denied(key), "{key} should be denied");
        }
    }

    #[test]
    fn added_keys_match_compacted_substrings() {
        let mut deny = Denylist::default();
        deny.add("Date-Of-Birth");
        assert!(deny.is_denied("user_date_of_birth"));
        assert!(deny.is_denied("dateOfBirth"));
        assert!(!deny.is_denied("date"));
        deny.add("--");
        assert!(!deny.is_denied("date"));
    }
}
