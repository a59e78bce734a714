//! The key denylist: keys whose values are never stored, at any depth.

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
        let compacted = compact(key);
        SUBSTRINGS.iter().any(|w| compacted.contains(w))
            || EXACT.contains(&compacted.as_str())
            || self.extra.iter().any(|w| compacted.contains(w.as_str()))
            || words(key).iter().any(|w| WORDS.contains(&w.as_str()))
    }
}

/// Whether the value after this key in free text is a header value that runs to the end of
/// the line (`Authorization: Digest a=1, b=2`, `Cookie: a=1; b=2`).
pub(super) fn is_header_like(key: &str) -> bool {
    let compacted = compact(key);
    compacted.contains("authorization")
        || compacted.contains("cookie")
        || words(key).iter().any(|w| w == "auth")
}

/// Lowercase, letters and digits only: `X-Auth_Token` → `xauthtoken`.
fn compact(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
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
