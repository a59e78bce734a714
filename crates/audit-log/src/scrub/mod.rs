//! PII scrubbing: what of an event's metadata and free text may be written to the audit log.
//!
//! An audit log is kept for years, copied to exports and read by people who must not see the
//! customers' personal data or anyone's credentials. Whatever reaches the log cannot be taken
//! back: every entry is hashed into the chain. So the [`Scrubber`] runs *before* an event is
//! sealed, and errs towards removing too much: a false positive costs a little context, a
//! false negative leaks a password into an append-only table.
//!
//! ```
//! use audit_log::scrub::{FieldRule, PseudonymKey, Replacement, ScrubPolicy, Scrubber};
//! use serde_json::json;
//! use tenant_scope::TenantId;
//!
//! let policy = ScrubPolicy::new()
//!     .with_replacement(Replacement::Pseudonymise)
//!     .allow("user.invite", "role", FieldRule::Keep);
//! let scrubber = Scrubber::new(policy, vec![PseudonymKey::new(1, Box::new([7; 32]))])?;
//!
//! let tenant = TenantId::new_random();
//! let metadata = json!({
//!     "role": "admin",
//!     "invitee": "Ann.Lee@example.com",
//!     "callback": "https://hooks.example.com/in?token=s3cr3t&page=2",
//!     "password": "hunter2",
//! });
//! let scrubbed = scrubber.scrub_metadata(tenant, "user.invite", &metadata)?;
//!
//! assert_eq!(scrubbed["role"], "admin");
//! assert!(scrubbed.get("password").is_none());
//! let invitee = scrubbed["invitee"].as_str().unwrap_or_default();
//! assert!(invitee.starts_with("pn:v1:"));
//! // The same address, however it is spelt, has the same pseudonym within the tenant.
//! assert_eq!(invitee, scrubber.pseudonym(tenant, " ann.lee@EXAMPLE.com ")?);
//! let callback = scrubbed["callback"].as_str().unwrap_or_default();
//! assert!(callback.starts_with("https://hooks.example.com/in?token=pn:v1:"));
//! assert!(callback.ends_with("&page=2"));
//! # Ok::<(), audit_log::scrub::ScrubError>(())
//! ```
//!
//! # The rules, in the order they apply
//!
//! **1. Denylisted keys are removed**, key and value, at any depth (inside nested objects and
//! arrays, and inside scanned JSON strings), even when the key is also allowlisted. Keys are
//! compared by their confusable skeleton (Unicode TS #39, `unicode-security`): lowercased,
//! mapped to the skeleton, lowercased again, letters and digits only, so a Cyrillic `а`, a
//! fullwidth `ａ`, a zero-width space or `0` for `o` does not hide `password`; a key is denied
//! when
//!
//! - compacted so (`X-Auth-Token` → `xauthtoken`), it
//!   *contains* one of: `password`, `passwd`, `passphrase`, `secret`, `token`,
//!   `authorization`, `cookie`, `credential`, `creds`, `apikey`, `privatekey`, `accesskey`,
//!   `accountkey`, `authkey`, `signingkey`, `encryptionkey`, `masterkey`, `sessionid`,
//!   `sessionkey`, `recoverycode`, `backupcode`, `creditcard`, `cardnumber`, `securitycode`,
//!   `socialsecurity`, `seedphrase`, `mnemonic`, `connectionstring`, `bearer`, `jwt`, `csrf`,
//!   `xsrf`; or
//! - one of its *words* (split at `-`, `_`, `.`, spaces and camelCase humps: `userPIN` →
//!   `user`, `pin`) is one of: `pwd`, `pw`, `pass`, `otp`, `totp`, `hotp`, `pin`, `ssn`, `cvv`,
//!   `cvc`, `cvv2`, `cvc2`, `sid`, `dsn`, `auth`. These short words are not matched as
//!   substrings, so `footprint` and `businessName` are kept; or
//! - it is exactly `key`; or
//! - it contains a key added with [`ScrubPolicy::deny_key`] (compared the same way, as a
//!   substring).
//!
//! So `user_password`, `sessionCookie`, `set-cookie`, `awsSecretAccessKey`, `api-key`,
//! `client_secret`, `private_key`, `recovery_code`, `X-Auth-Token` are all removed; so are
//! `tokens_used` and `author_token_count` (a false positive, accepted).
//!
//! Key/value structures are judged like object keys: a pair whose name is denied is removed
//! whole, at any depth and under every rule — a two-element array whose first element is a
//! name-like denied string (`[["password", "x"]]`, header tuples), an object with a name member
//! (`name`, `key`, `field`, `header`, `param`, `type`, …) holding a denied name and a value
//! member (`value`, `val`, `data`, `content`, …) (HAR headers, form fields), and in a flat list
//! of an even number of strings (`rawHeaders`), a denied name at an even position with the
//! value after it. Metadata that is itself such a pair becomes `{}`.
//!
//! **2. Top-level fields follow the action's allowlist** ([`ScrubPolicy::allow`]), matched by
//! exact action and field name: [`FieldRule::Keep`] stores the value as it is (no detectors,
//! JSON strings not parsed; the denylist and the pair rule still apply inside it), [`FieldRule::Scan`]
//! runs the detectors, [`FieldRule::Pseudonymise`] replaces every string and number in the
//! value with its pseudonym (`true`/`false`/`null` are kept), [`FieldRule::Drop`] removes the
//! field.
//!
//! **3. Fields not on the allowlist** are scanned ([`UnknownFields::Scan`], the default) or
//! removed ([`UnknownFields::Drop`], "allowlist mode"). Scanning reaches every string at any
//! depth, object keys included.
//!
//! **4. Detectors** find sensitive spans in strings (and card numbers in JSON numbers:
//! integers, negative numbers, and floats whose integer part is one; a float above 2^53 with
//! 13–19 digits starting with 2–6 counts without the Luhn check, as its digits are no longer
//! exact). Every Unicode decimal digit (`Nd`: `４`, `٤`, `४`, `𝟒`) is folded to ASCII before
//! the detectors run, and spans are mapped back:
//!
//! | Detector | Matches | Label |
//! |---|---|---|
//! | e-mail | `local@domain.tld` (Unicode letters allowed, at least one dot in the domain; ideographic `。`, fullwidth `．` and halfwidth `｡` dots and a fullwidth `＠` too) | `[email]` |
//! | phone | E.164: `+`, then 7–15 digits, separated by at most two of space `-` `.` `(` `)` | `[phone]` |
//! | card | 13–19 digits, alone or in groups separated by one space or `-`, starting with 2–6 (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro) and passing the Luhn check | `[card]` |
//! | JWT / JWE | `eyJ…` then two (or four) more base64url segments | `[jwt]` |
//! | bearer | `Bearer <token>` where the token looks like one (6+ characters with a non-letter, 8+ with an inner capital, or 20+) | `[bearer]` |
//! | basic | `Basic <base64>` decoding to `user:password` | `[basic]` |
//! | cloud key | AWS `AKIA`/`ASIA`/`ABIA`/`ACCA` + 16, GCP `AIza` + 35, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`/`github_pat_`, Slack `xox[abprse]-`/`xapp-`, Stripe `sk_`/`rk_` `live`/`test`, `whsec_`, GitLab `glpat-`, Google OAuth `ya29.`, npm `npm_`, OpenAI/Anthropic `sk-…`, SendGrid `SG.…` | `[cloud_key]` |
//! | PEM | `-----BEGIN …-----` through the next `-----END …-----` (to the end of the text if there is none) | `[pem]` |
//! | URL userinfo | `scheme://user:pass@host`: the part before the last `@`; the host is kept | `[userinfo]` |
//! | URL parameter | the value of `token`, `access_token`, `id_token`, `refresh_token`, `code`, `key`, `api_key`, `apikey`, `secret`, `client_secret`, `password`, `passwd`, `pwd`, `signature`, `sig`, `X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`, `X-Goog-Signature`, `X-Goog-Credential`, `auth`, `jwt`, `session`, `sessionid`, `session_id` after `?`, `&`, `;` or `#` (case-insensitive); other parameters are kept | `[redacted]` |
//! | key = value | in free text, the value after a denylisted key and `:` or `=` (`password=…`, `"client_secret": "…"`, also JSON with escaped quotes); after `Authorization`/`Cookie`-like keys, the rest of the line | `[redacted]` |
//! | nested JSON | a string that parses as a JSON object or array is scrubbed as JSON (rules 1, 3, 4) and re-serialised | — |
//! | percent-encoding | a text with a `%XX` escape is decoded (`+` as a space) and scanned; findings are mapped back onto the encoded text | the finding's |
//! | encoded blob | a run of 8+ base64/base64url characters or 12+ hex digits (also after `0x`) that decodes (an all-hex run both ways) to anything the scrubber would change: detectors, nested JSON, pairs, further encodings | `[encoded]` |
//!
//! Overlapping spans are merged into one, labelled by the longest (so `?token=eyJ…` becomes
//! `?token=[jwt]`). Not detected: phone numbers without `+` (national formats are
//! indistinguishable from ids), cards starting with 1, 7, 8 or 9, e-mail addresses without a
//! dot in the domain, hex with separators, other encodings (base32, quoted-printable,
//! compressed data).
//!
//! **5. Replacement** ([`Replacement`]) of what a detector found:
//!
//! - [`Replacement::Mask`] (the default): the span becomes its label, e.g.
//!   `"card 4111 1111 1111 1111 declined"` → `"card [card] declined"`.
//! - [`Replacement::Drop`]: a string with any detection is removed whole (the field from its
//!   object, the element from its array; [`Scrubber::scrub_text`] returns `[redacted]`), as is
//!   an object key with a detection, with its value.
//! - [`Replacement::Pseudonymise`]: the span becomes `pn:v<version>:<32 hex digits>`.
//!
//! # Pseudonyms
//!
//! ```text
//! tenant_key = HMAC-SHA256(master_key, "audit-log pseudonym v<version>\0" || tenant UUID (16 bytes))
//! pseudonym  = "pn:v<version>:" || hex(HMAC-SHA256(tenant_key, normalised value)[..16])
//! ```
//!
//! `<version>` is the decimal version of the newest [`PseudonymKey`] given to the scrubber.
//! Values are normalised first: e-mail addresses trimmed, NFKC-normalised, ideographic full
//! stops made `.`, and lowercased; phone and card numbers reduced to their ASCII digits (of any
//! script); anything else used as it is; a whole value given to
//! [`Scrubber::pseudonym`] or [`FieldRule::Pseudonymise`] is normalised the same way when it
//! is exactly one e-mail address, phone or card number. So the same person has the same
//! pseudonym in every event of a tenant and a different one in every other tenant; without
//! the master key nobody can compute a pseudonym, so a dictionary of known addresses does not
//! reverse them. 128 bits make accidental collisions negligible. Rotating the key (adding a
//! newer version) changes every pseudonym from then on; [`Scrubber::pseudonym_candidates`]
//! computes a value's pseudonym under every version held, to search older entries.
//!
//! # Limits
//!
//! Containers nested deeper than [`MAX_DEPTH`] (the metadata object is level 1; a JSON
//! string parsed as JSON adds a level), values after the first [`MAX_NODES`] of one call, and
//! strings after [`MAX_SCAN_BYTES`] of text in one call are not scanned: they are replaced by
//! `[truncated]` (or removed under [`Replacement::Drop`]). Decoding is bounded: no encoding
//! decodes to more bytes than it has characters, at most [`MAX_DECODE_DEPTH`] layers are
//! decoded inside one another (below that, a blob that decodes to text is `[encoded]`), and
//! the decoded bytes of one call count against [`MAX_DECODED_BYTES`]; a string whose blobs
//! cannot all be decoded within it becomes `[truncated]`. Nothing unscanned is let through, and
//! recursion never goes deeper than the limits, whatever the input.
//!
//! The output is a function of the input, the policy, the keys and the tenant only, so it can
//! be hashed. Detectors are compiled once per process and run in time linear in the text.

mod decode;
mod denylist;
mod detect;
mod fold;
mod policy;
mod pseudonym;
mod scrubber;

pub use policy::{FieldRule, Replacement, ScrubPolicy, UnknownFields};
pub use pseudonym::PseudonymKey;
pub use scrubber::Scrubber;

/// The deepest level of nested objects and arrays that is scanned; deeper containers are
/// replaced by `[truncated]`. The metadata object is level 1.
pub const MAX_DEPTH: usize = 32;

/// The most JSON values (of any kind, at any depth) scrubbed in one call; later values are
/// replaced by `[truncated]`.
pub const MAX_NODES: usize = 10_000;

/// The most bytes of text scanned in one call (256 KiB, a few tens of milliseconds at worst);
/// later strings are replaced by `[truncated]`.
pub const MAX_SCAN_BYTES: usize = 256 * 1024;

/// The most layers of encoding (percent-encoding, base64, base64url, hex, in any mix) decoded
/// inside one another; a blob still encoded below that is masked if it decodes to text.
pub const MAX_DECODE_DEPTH: usize = 3;

/// The most bytes that decoding encoded blobs may produce in one call (256 KiB, as much again
/// as [`MAX_SCAN_BYTES`], so a call scans at most twice that). No encoding decodes to more
/// bytes than it has characters. A string whose blobs cannot all be decoded within the budget
/// is replaced by `[truncated]` (removed under [`Replacement::Drop`]).
pub const MAX_DECODED_BYTES: usize = MAX_SCAN_BYTES;

/// What went wrong while configuring or running the scrubber. Messages never include the
/// values being scrubbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubError {
    /// Metadata must be a JSON object.
    #[error("audit metadata must be a json object")]
    NotAnObject,
    /// The policy pseudonymises values but no [`PseudonymKey`] was given.
    #[error("pseudonymisation is configured but no pseudonym key was given")]
    MissingPseudonymKey,
    /// Two pseudonym keys have the same version.
    #[error("two pseudonym keys have the same version")]
    DuplicateKeyVersion,
    /// The built-in detectors failed to compile (a bug in this crate).
    #[error("the value detectors could not be built")]
    Detectors,
    /// A pseudonym could not be computed.
    #[error("pseudonym derivation failed")]
    Pseudonym,
}
