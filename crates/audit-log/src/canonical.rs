//! The canonical form of a scrubbed event and the chain hash over it.
//!
//! The canonical form is produced here, in Rust, from the event's values — never from
//! PostgreSQL's text output of a row, which depends on `TimeZone`, `DateStyle`, `extra_float_digits`
//! and the server version. It is JSON laid out as `jsonb`'s text form prints it (keys ordered by
//! length, then by their UTF-8 bytes, at every depth; `", "` and `": "` as separators; numbers in
//! plain decimal notation), absent optional fields omitted, the time as RFC 3339 UTC with exactly six
//! fractional digits, and the schema version in `"schema"`. The bytes are stored as they are
//! and hashed as they are: verification never re-serialises.
//!
//! Chain: `hash(seq) = SHA-256("audit-log/chain/v1\n" || tenant (16 bytes) || seq (8 bytes,
//! big-endian) || hash(seq - 1) || canonical(seq))`, starting from
//! `SHA-256("audit-log/genesis/v1\n" || tenant)`. The tenant and the sequence number are inside
//! the hash, so a row moved to another tenant's chain or to another position fails to verify
//! even if its bytes are unchanged.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tenant_scope::TenantId;
use time::OffsetDateTime;

use crate::AuditError;
use crate::event::{AuditEvent, SCHEMA_VERSION};

/// A SHA-256 chain hash.
pub type ChainHash = [u8; 32];

pub(crate) const GENESIS_DOMAIN: &[u8] = b"audit-log/genesis/v1\n";
pub(crate) const CHAIN_DOMAIN: &[u8] = b"audit-log/chain/v1\n";

/// The hash every tenant's chain starts from.
#[must_use]
pub fn genesis_hash(tenant: TenantId) -> ChainHash {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    h.update(tenant.as_uuid().as_bytes());
    h.finalize().into()
}

/// The hash of event `seq` in `tenant`'s chain, given the previous hash and its canonical bytes.
#[must_use]
pub fn chain_hash(tenant: TenantId, seq: u64, prev: &ChainHash, canonical: &[u8]) -> ChainHash {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(tenant.as_uuid().as_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// The server time, truncated to the microsecond PostgreSQL stores.
pub(crate) fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// RFC 3339 UTC with six fractional digits.
///
/// # Errors
/// [`AuditError::Malformed`] for a time outside what RFC 3339 can write (years beyond 9999).
pub fn format_time(at: OffsetDateTime) -> Result<String, AuditError> {
    let mut buf = [0u8; TIME_LEN];
    write_time(at, &mut buf)?;
    Ok(buf.iter().map(|&b| char::from(b)).collect())
}

/// The length of a formatted time.
pub(crate) const TIME_LEN: usize = 27;

/// Writes `at` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the verifier does this once per event, so it
/// avoids the general formatter).
pub(crate) fn write_time(at: OffsetDateTime, buf: &mut [u8; TIME_LEN]) -> Result<(), AuditError> {
    fn digits(out: &mut [u8], mut value: u32) {
        for b in out.iter_mut().rev() {
            // `value % 10` is below 10: the cast cannot truncate.
            *b = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    let at = at.to_offset(time::UtcOffset::UTC);
    let year = u32::try_from(at.year())
        .ok()
        .filter(|y| *y <= 9999)
        .ok_or(AuditError::Malformed("time outside RFC 3339"))?;
    digits(&mut buf[0..4], year);
    buf[4] = b'-';
    digits(&mut buf[5..7], u32::from(u8::from(at.month())));
    buf[7] = b'-';
    digits(&mut buf[8..10], u32::from(at.day()));
    buf[10] = b'T';
    digits(&mut buf[11..13], u32::from(at.hour()));
    buf[13] = b':';
    digits(&mut buf[14..16], u32::from(at.minute()));
    buf[16] = b':';
    digits(&mut buf[17..19], u32::from(at.second()));
    buf[19] = b'.';
    digits(&mut buf[20..26], at.microsecond());
    buf[26] = b'Z';
    Ok(())
}

/// The canonical bytes of an already scrubbed event stamped at `occurred_at`.
pub(crate) fn canonical_bytes(
    event: &AuditEvent,
    occurred_at: OffsetDateTime,
) -> Result<Vec<u8>, AuditError> {
    use serde_json::{Map, Value};
    let mut actor = Map::new();
    actor.insert("kind".into(), event.actor.kind().into());
    if let Some(id) = event.actor.id() {
        actor.insert("id".into(), id.to_string().into());
    }
    if let Some(home) = event.actor.home_tenant() {
        actor.insert("tenant".into(), home.to_string().into());
    }
    let mut outcome = Map::new();
    outcome.insert("status".into(), event.outcome.status().into());
    if let Some(reason) = event.outcome.reason() {
        outcome.insert("reason".into(), reason.into());
    }
    let targets: Vec<Value> = event
        .targets
        .iter()
        .map(|t| {
            let mut m = Map::new();
            m.insert("kind".into(), t.kind().into());
            m.insert("id".into(), t.id().into());
            Value::Object(m)
        })
        .collect();
    let mut root = Map::new();
    root.insert("schema".into(), SCHEMA_VERSION.into());
    root.insert("tenant".into(), event.tenant.to_string().into());
    root.insert("occurred_at".into(), format_time(occurred_at)?.into());
    root.insert("actor".into(), Value::Object(actor));
    root.insert("action".into(), event.action.as_str().into());
    root.insert("outcome".into(), Value::Object(outcome));
    if !targets.is_empty() {
        root.insert("targets".into(), Value::Array(targets));
    }
    if let Some(id) = &event.request_id {
        root.insert("request_id".into(), id.as_str().into());
    }
    if let Some(ip) = event.ip {
        root.insert("ip".into(), ip.to_string().into());
    }
    if let Some(ua) = &event.user_agent {
        root.insert("user_agent".into(), ua.as_str().into());
    }
    if !event.metadata.is_empty() {
        root.insert("metadata".into(), Value::Object(event.metadata.clone()));
    }
    let mut out = Vec::with_capacity(512);
    write_canonical(&Value::Object(root), &mut out);
    Ok(out)
}

/// JSON in PostgreSQL's `jsonb` text form: object keys ordered by length, then by their UTF-8
/// bytes, at every depth; `", "` between members and items and `": "` after a key; numbers in
/// plain decimal notation as `numeric` prints them. A record in this form is exactly what
/// `record::jsonb::text` gives back, which is how the database checks with one comparison that
/// it repeats no key (see `schema.rs`).
pub(crate) fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| {
                (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes()))
            });
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_scalar(&Value::String(key.clone()), out);
                out.extend_from_slice(b": ");
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Number(n) if n.is_f64() => write_decimal(&n.to_string(), out),
        scalar => write_scalar(scalar, out),
    }
}

/// A float's shortest representation (`1.5e-7`, `-0.0`) in `numeric`'s plain decimal notation
/// (`0.00000015`, `0.0`): the same digits, the point moved by the exponent, no sign on zero.
fn write_decimal(repr: &str, out: &mut Vec<u8>) {
    let (negative, unsigned) = repr
        .strip_prefix('-')
        .map_or((false, repr), |rest| (true, rest));
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    // Where the point goes in `digits`, and how many fraction digits `numeric` keeps.
    let whole_len = i64::try_from(whole.len()).unwrap_or(i64::MAX);
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let point = whole_len.saturating_add(exponent);
    let scale = fraction_len.saturating_sub(exponent).max(0);
    let mut text = Vec::new();
    if point <= 0 {
        text.push(b'0');
        text.push(b'.');
        text.extend(std::iter::repeat_n(
            b'0',
            usize::try_from(-point).unwrap_or(0),
        ));
        text.extend_from_slice(&digits);
    } else {
        let point = usize::try_from(point).unwrap_or(usize::MAX);
        if point >= digits.len() {
            text.extend_from_slice(&digits);
            text.extend(std::iter::repeat_n(b'0', point - digits.len()));
        } else {
            text.extend_from_slice(&digits[..point]);
            text.push(b'.');
            text.extend_from_slice(&digits[point..]);
        }
    }
    // `numeric` keeps `scale` fraction digits: pad or trim what the move left.
    let dot = text.iter().position(|&b| b == b'.');
    let have = dot.map_or(0, |d| text.len() - d - 1);
    let want = usize::try_from(scale).unwrap_or(0);
    if have < want {
        if dot.is_none() {
            text.push(b'.');
        }
        text.extend(std::iter::repeat_n(b'0', want - have));
    } else if have > want {
        let cut = text.len() - (have - want);
        text.truncate(if want == 0 { cut - 1 } else { cut });
    }
    // Leading zeros of the whole part go, but one digit stays before a point.
    let first = text.iter().position(|&b| b != b'0').unwrap_or(text.len());
    let keep_from = if text.get(first) == Some(&b'.') || first == text.len() {
        first.saturating_sub(1)
    } else {
        first
    };
    let text = &text[keep_from..];
    let zero = text.iter().all(|&b| b == b'0' || b == b'.');
    if negative && !zero {
        out.push(b'-');
    }
    out.extend_from_slice(text);
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail (no I/O, no map keys).
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A canonical record as the verifier reads it: every field the writer produces, nothing else
/// (an unknown or duplicated field makes the record malformed), and the ones it compares with
/// the row's columns borrowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CanonicalView<'a> {
    pub(crate) schema: u32,
    #[serde(borrow)]
    pub(crate) tenant: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) occurred_at: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) action: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) actor: ActorView<'a>,
    #[serde(borrow)]
    pub(crate) outcome: OutcomeView<'a>,
    #[serde(borrow, default)]
    pub(crate) request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "targets")]
    _targets: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "ip")]
    _ip: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "user_agent")]
    _user_agent: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActorView<'a> {
    #[serde(borrow)]
    pub(crate) kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "tenant")]
    _tenant: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutcomeView<'a> {
    #[serde(borrow)]
    pub(crate) status: std::borrow::Cow<'a, str>,
    #[serde(default, rename = "reason")]
    _reason: Option<serde::de::IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditActor, Outcome, actions};

    #[test]
    fn keys_are_sorted_at_every_depth_whatever_the_insertion_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"é"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"c":"é","z":[{"x":2,"y":1}]},"b":1}"#).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        write_canonical(&a, &mut x);
        write_canonical(&b, &mut y);
        assert_eq!(x, y);
        assert_eq!(
            String::from_utf8(x).unwrap(),
            r#"{"a": {"c": "é", "z": [{"x": 2, "y": 1}]}, "b": 1}"#
        );
        // Shorter keys first, as `jsonb` orders them.
        let mut z = Vec::new();
        write_canonical(
            &serde_json::json!({"bb": 1, "a": {}, "ab": [], "b": "\n\u{1}"}),
            &mut z,
        );
        assert_eq!(
            String::from_utf8(z).unwrap(),
            r#"{"a": {}, "b": "\n\u0001", "ab": [], "bb": 1}"#
        );
    }

    #[test]
    fn floats_are_written_as_numeric_prints_them() {
        for (value, text) in [
            (-0.0, "0.0"),
            (1e-7, "0.0000001"),
            (1.5e21, "1500000000000000000000"),
            (0.1, "0.1"),
            (1e16, "10000000000000000"),
            (-1.25e-3, "-0.00125"),
            (100.0, "100.0"),
            (0.001, "0.001"),
            (12.5, "12.5"),
            (-3.0e-300, &format!("-0.{}3", "0".repeat(299))),
        ] {
            let mut out = Vec::new();
            write_canonical(&serde_json::json!(value), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{value:e}");
        }
    }

    #[test]
    fn time_has_six_fraction_digits_in_utc() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_000)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(5, 30, 0).unwrap());
        assert_eq!(format_time(at).unwrap(), "2026-09-21T14:13:20.123456Z");
        let early = OffsetDateTime::from_unix_timestamp(-62_135_596_800).unwrap(); // 0001-01-01
        assert_eq!(format_time(early).unwrap(), "0001-01-01T00:00:00.000000Z");
    }

    #[test]
    fn canonical_record_round_trips_through_the_view() {
        let tenant = TenantId::new_random();
        let event = AuditEvent::new(
            tenant,
            AuditActor::anonymous(),
            actions::AUTHZ_DENIED,
            Outcome::denied("mfa_required"),
        )
        .with_request_id("req-1");
        let bytes = canonical_bytes(&event, now_micros()).unwrap();
        let view: CanonicalView<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(view.tenant, tenant.to_string());
        assert_eq!(view.action, "authz.denied");
        assert_eq!(view.outcome.status, "denied");
        assert_eq!(view.actor.kind, "anonymous");
        assert_eq!(view.request_id.as_deref(), Some("req-1"));
        assert_eq!(view.schema, SCHEMA_VERSION);
        // Unknown or duplicated fields are not a canonical record.
        let text = String::from_utf8(bytes).unwrap();
        let extra = text.replacen('{', "{\"admin\":true,", 1);
        assert!(serde_json::from_str::<CanonicalView<'_>>(&extra).is_err());
        let twice = text.replacen('{', "{\"action\":\"authn.logout\",", 1);
        assert!(serde_json::from_str::<CanonicalView<'_>>(&twice).is_err());
    }

    #[test]
    fn the_hash_binds_tenant_position_and_predecessor() {
        let (a, b) = (TenantId::new_random(), TenantId::new_random());
        let prev = genesis_hash(a);
        let h = chain_hash(a, 1, &prev, b"{}");
        assert_ne!(h, chain_hash(b, 1, &prev, b"{}"));
        assert_ne!(h, chain_hash(a, 2, &prev, b"{}"));
        assert_ne!(h, chain_hash(a, 1, &genesis_hash(b), b"{}"));
        assert_ne!(h, chain_hash(a, 1, &prev, b"{ }"));
        assert_ne!(genesis_hash(a), genesis_hash(b));
    }
}
