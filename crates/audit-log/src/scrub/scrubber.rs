//! The scrubber: applies a [`ScrubPolicy`] to metadata and free text.

use std::cell::OnceCell;

use serde_json::{Map, Number, Value};
use tenant_scope::TenantId;

use super::detect::{self, Detectors, Kind, Span};
use super::policy::{FieldRule, Replacement, ScrubPolicy, UnknownFields};
use super::pseudonym::{PseudonymKey, TenantPseudonymiser};
use super::{
    MAX_DECODE_DEPTH, MAX_DECODED_BYTES, MAX_DEPTH, MAX_NODES, MAX_SCAN_BYTES, ScrubError, decode,
    fold,
};

/// What a value beyond the limits becomes.
const TRUNCATED: &str = "[truncated]";
/// What a whole text with a detection becomes under [`Replacement::Drop`].
const REDACTED: &str = "[redacted]";

/// Scrubs event metadata and free text by a [`ScrubPolicy`] (see the [module docs](super)
/// for the rules).
///
/// `Send + Sync`. Debug output shows the policy and key versions, never keys.
#[derive(Clone)]
pub struct Scrubber {
    policy: ScrubPolicy,
    /// Newest first; the first pseudonymises.
    keys: Vec<PseudonymKey>,
    detectors: &'static Detectors,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<u32> = self.keys.iter().map(PseudonymKey::version).collect();
        f.debug_struct("Scrubber")
            .field("policy", &self.policy)
            .field("key_versions", &versions)
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for `policy`; pseudonyms are made with the key of the highest version.
    ///
    /// # Errors
    /// [`ScrubError::MissingPseudonymKey`] if the policy pseudonymises (its replacement or any
    /// field rule) and `keys` is empty; [`ScrubError::DuplicateKeyVersion`];
    /// [`ScrubError::Detectors`] if the built-in detectors failed to compile (a bug).
    pub fn new(policy: ScrubPolicy, mut keys: Vec<PseudonymKey>) -> Result<Self, ScrubError> {
        let detectors = detect::detectors()?;
        if keys.is_empty() && policy.pseudonymises() {
            return Err(ScrubError::MissingPseudonymKey);
        }
        keys.sort_by_key(|key| std::cmp::Reverse(key.version()));
        if keys.windows(2).any(|w| w[0].version() == w[1].version()) {
            return Err(ScrubError::DuplicateKeyVersion);
        }
        Ok(Self {
            policy,
            keys,
            detectors,
        })
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &ScrubPolicy {
        &self.policy
    }

    /// The version of the key pseudonyms are made with now, if there is a key.
    #[must_use]
    pub fn key_version(&self) -> Option<u32> {
        self.keys.first().map(PseudonymKey::version)
    }

    /// Scrubs the metadata of one event of `action` in `tenant`.
    ///
    /// # Errors
    /// [`ScrubError::NotAnObject`] if `metadata` is not a JSON object.
    pub fn scrub_metadata(
        &self,
        tenant: TenantId,
        action: &str,
        metadata: &Value,
    ) -> Result<Value, ScrubError> {
        let Value::Object(fields) = metadata else {
            return Err(ScrubError::NotAnObject);
        };
        // The metadata itself is a name/value pair with a denied name: nothing of it is kept.
        if self.policy.denylist.is_denied_pair(metadata) {
            return Ok(Value::Object(Map::new()));
        }
        let rules = self.policy.fields.get(action);
        let mut pass = Pass::new(self, tenant);
        pass.nodes_left -= 1; // the metadata object itself
        let mut out = Map::new();
        for (key, value) in fields {
            if self.policy.denylist.is_denied(key) {
                continue;
            }
            let (key, mode) = match rules.and_then(|rules| rules.get(key)) {
                Some(FieldRule::Drop) => continue,
                Some(FieldRule::Keep) => (key.clone(), Mode::Keep),
                Some(FieldRule::Scan) => (key.clone(), Mode::Scan),
                Some(FieldRule::Pseudonymise) => (key.clone(), Mode::Pseudonymise),
                None => match self.policy.unknown_fields {
                    UnknownFields::Drop => continue,
                    UnknownFields::Scan => match pass.key(key, 1) {
                        Some(key) => (key, Mode::Scan),
                        None => continue,
                    },
                },
            };
            if let Some(value) = pass.value(value, mode, 1) {
                out.entry(key).or_insert(value);
            }
        }
        Ok(Value::Object(out))
    }

    /// Runs the detectors over free text (an outcome reason, a target id) and replaces what
    /// they find. A text that is a JSON object or array is scrubbed as JSON. Under
    /// [`Replacement::Drop`] a text with any detection becomes `[redacted]`; a text longer
    /// than [`MAX_SCAN_BYTES`](super::MAX_SCAN_BYTES) becomes `[truncated]`.
    #[must_use]
    pub fn scrub_text(&self, tenant: TenantId, text: &str) -> String {
        let mut pass = Pass::new(self, tenant);
        match pass.text(text, 0) {
            Some(Value::String(scrubbed)) => scrubbed,
            _ if text.len() > MAX_SCAN_BYTES => TRUNCATED.to_owned(),
            _ => REDACTED.to_owned(),
        }
    }

    /// The pseudonym of `value` in `tenant` under the newest key. A value that is exactly one
    /// e-mail address, phone or card number is normalised first, so this matches the
    /// pseudonyms the detectors write.
    ///
    /// # Errors
    /// [`ScrubError::MissingPseudonymKey`] if the scrubber has no key;
    /// [`ScrubError::Pseudonym`] if derivation failed.
    pub fn pseudonym(&self, tenant: TenantId, value: &str) -> Result<String, ScrubError> {
        let key = self.keys.first().ok_or(ScrubError::MissingPseudonymKey)?;
        let normalised = self.detectors.normalise_whole(value, &self.policy.denylist);
        Ok(TenantPseudonymiser::derive(key, tenant)?.pseudonym(&normalised))
    }

    /// The pseudonyms of `value` in `tenant` under every key held, newest first: what to
    /// search for to find a person in entries written before a key rotation.
    ///
    /// # Errors
    /// As [`Scrubber::pseudonym`].
    pub fn pseudonym_candidates(
        &self,
        tenant: TenantId,
        value: &str,
    ) -> Result<Vec<String>, ScrubError> {
        if self.keys.is_empty() {
            return Err(ScrubError::MissingPseudonymKey);
        }
        let normalised = self.detectors.normalise_whole(value, &self.policy.denylist);
        self.keys
            .iter()
            .map(|key| Ok(TenantPseudonymiser::derive(key, tenant)?.pseudonym(&normalised)))
            .collect()
    }
}

/// How a subtree is treated.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Keep,
    Scan,
    Pseudonymise,
}

/// The decode budget ran out: the text could not be scanned whole.
#[derive(Debug)]
struct Exhausted;

/// One call's state: the tenant's pseudonymiser (derived on first use) and the work budget.
struct Pass<'a> {
    scrubber: &'a Scrubber,
    tenant: TenantId,
    pseudonymiser: OnceCell<Option<TenantPseudonymiser>>,
    nodes_left: usize,
    bytes_left: usize,
    /// Bytes that decoding encoded blobs may still produce.
    decode_left: usize,
    /// How many layers of encoding the text being scanned is inside.
    layer: usize,
}

impl<'a> Pass<'a> {
    fn new(scrubber: &'a Scrubber, tenant: TenantId) -> Self {
        Self {
            scrubber,
            tenant,
            pseudonymiser: OnceCell::new(),
            nodes_left: MAX_NODES,
            bytes_left: MAX_SCAN_BYTES,
            decode_left: MAX_DECODED_BYTES,
            layer: 0,
        }
    }

    fn replacement(&self) -> Replacement {
        self.scrubber.policy.replacement
    }

    /// What a value beyond a limit becomes: removed under [`Replacement::Drop`], else
    /// `[truncated]`.
    fn truncated(&self) -> Option<Value> {
        match self.replacement() {
            Replacement::Drop => None,
            _ => Some(Value::String(TRUNCATED.to_owned())),
        }
    }

    /// The pseudonym of an already normalised value, or `fallback` if no key could be used
    /// (not reachable: [`Scrubber::new`] refuses a pseudonymising policy without a key).
    fn pseudonym_or(&self, normalised: &str, fallback: &str) -> String {
        let pseudonymiser = self.pseudonymiser.get_or_init(|| {
            let key = self.scrubber.keys.first()?;
            TenantPseudonymiser::derive(key, self.tenant).ok()
        });
        match pseudonymiser {
            Some(p) => p.pseudonym(normalised),
            None => fallback.to_owned(),
        }
    }

    /// A value (whose container is at level `depth`) under `mode`; `None` removes it.
    fn value(&mut self, value: &Value, mode: Mode, depth: usize) -> Option<Value> {
        if self.nodes_left == 0 {
            return self.truncated();
        }
        self.nodes_left -= 1;
        // A name/value pair is judged like an object key: denied, it goes whole.
        if self.scrubber.policy.denylist.is_denied_pair(value) {
            return None;
        }
        match value {
            Value::Null | Value::Bool(_) => Some(value.clone()),
            Value::Number(n) => match mode {
                Mode::Keep => Some(value.clone()),
                Mode::Scan => self.number(n),
                Mode::Pseudonymise => self.pseudonym_whole(&n.to_string()),
            },
            Value::String(s) => match mode {
                Mode::Keep => Some(value.clone()),
                Mode::Scan => self.text(s, depth),
                Mode::Pseudonymise => self.pseudonym_whole(s),
            },
            Value::Array(items) => {
                if depth >= MAX_DEPTH {
                    return self.truncated();
                }
                let removed = self.scrubber.policy.denylist.flat_pairs_removed(items);
                let items = items
                    .iter()
                    .zip(removed)
                    .filter(|(_, removed)| !removed)
                    .filter_map(|(item, _)| self.value(item, mode, depth + 1))
                    .collect();
                Some(Value::Array(items))
            }
            Value::Object(fields) => {
                if depth >= MAX_DEPTH {
                    return self.truncated();
                }
                let mut out = Map::new();
                for (key, value) in fields {
                    if self.scrubber.policy.denylist.is_denied(key) {
                        continue;
                    }
                    let key = match mode {
                        Mode::Keep => key.clone(),
                        Mode::Scan | Mode::Pseudonymise => match self.key(key, depth) {
                            Some(key) => key,
                            None => continue,
                        },
                    };
                    if let Some(value) = self.value(value, mode, depth + 1) {
                        out.entry(key).or_insert(value);
                    }
                }
                Some(Value::Object(out))
            }
        }
    }

    /// What a string that could not be scanned whole becomes.
    fn truncated_text(&self) -> Option<String> {
        match self.replacement() {
            Replacement::Drop => None,
            _ => Some(TRUNCATED.to_owned()),
        }
    }

    /// An object key (of a container at level `depth`) under the detectors; `None` removes
    /// the entry.
    fn key(&mut self, key: &str, depth: usize) -> Option<String> {
        if key.len() > self.bytes_left {
            self.bytes_left = 0;
            return self.truncated_text();
        }
        self.bytes_left -= key.len();
        self.replace_spans(key, depth)
    }

    /// A JSON number that is a card number (integer, negative or float) is replaced; other
    /// numbers are kept.
    fn number(&self, n: &Number) -> Option<Value> {
        let Some(digits) = detect::card_in_number(n) else {
            return Some(Value::Number(n.clone()));
        };
        match self.replacement() {
            Replacement::Drop => None,
            Replacement::Pseudonymise => Some(Value::String(
                self.pseudonym_or(&digits, Kind::Card.label()),
            )),
            _ => Some(Value::String(Kind::Card.label().to_owned())),
        }
    }

    /// A string (whose container is at level `depth`): nested JSON is scrubbed as JSON, other
    /// text by the detectors.
    fn text(&mut self, text: &str, depth: usize) -> Option<Value> {
        if text.len() > self.bytes_left {
            self.bytes_left = 0;
            return self.truncated();
        }
        self.bytes_left -= text.len();
        if let Some(nested) = self.nested_json(text, depth) {
            return nested;
        }
        self.replace_spans(text, depth).map(Value::String)
    }

    /// `Some` if `text` parses as a JSON object or array: the scrubbed document,
    /// re-serialised (always, so duplicate keys cannot smuggle the original text through).
    fn nested_json(&mut self, text: &str, depth: usize) -> Option<Option<Value>> {
        if !text.trim_start().starts_with(['{', '[']) {
            return None;
        }
        let parsed: Value = serde_json::from_str(text).ok()?;
        Some(match self.value(&parsed, Mode::Scan, depth)? {
            // A label: the document was beyond a limit.
            Value::String(label) => Some(Value::String(label)),
            scrubbed => match serde_json::to_string(&scrubbed) {
                Ok(json) => Some(Value::String(json)),
                Err(_) => self.truncated(),
            },
        })
    }

    /// Detected spans replaced by the policy's replacement; `None` under [`Replacement::Drop`]
    /// when anything was found. A text whose encoded blobs could not all be decoded within the
    /// budget becomes `[truncated]` (removed under [`Replacement::Drop`]).
    fn replace_spans(&mut self, text: &str, depth: usize) -> Option<String> {
        let Ok(spans) = self.spans(text, depth) else {
            return self.truncated_text();
        };
        if spans.is_empty() {
            return Some(text.to_owned());
        }
        match self.replacement() {
            Replacement::Drop => None,
            Replacement::Pseudonymise => Some(render(text, &spans, |kind, found| {
                self.pseudonym_or(&detect::normalise(kind, found), kind.label())
            })),
            _ => Some(render(text, &spans, |kind, _| kind.label().to_owned())),
        }
    }

    /// The sensitive spans of `text`: what the detectors find in it, and the encoded parts
    /// of it that hide something (see [`Pass::encoded_spans`]).
    fn spans(&mut self, text: &str, depth: usize) -> Result<Vec<Span>, Exhausted> {
        let mut spans = self
            .scrubber
            .detectors
            .detect(text, &self.scrubber.policy.denylist);
        let encoded = self.encoded_spans(text, depth)?;
        if encoded.is_empty() {
            return Ok(spans);
        }
        spans.extend(encoded);
        Ok(detect::merge(spans))
    }

    /// Spans of `text` whose decoding is sensitive. Percent-encoded text is decoded whole and
    /// what is found in it is mapped back (so `ann%40example.com` becomes `[email]`); a run
    /// of base64, base64url or hex characters that decodes to something sensitive is an
    /// [`Kind::Encoded`] span. Decoded text is scanned like any text (detectors, nested JSON,
    /// further encodings) up to [`MAX_DECODE_DEPTH`] layers; at that depth, anything that
    /// would still decode to text counts as sensitive. Decoded bytes are charged to the
    /// call's [`MAX_DECODED_BYTES`].
    fn encoded_spans(&mut self, text: &str, depth: usize) -> Result<Vec<Span>, Exhausted> {
        let mut out = Vec::new();
        let at_limit = self.layer >= MAX_DECODE_DEPTH;
        let whole = Span {
            start: 0,
            end: text.len(),
            kind: Kind::Encoded,
        };
        if fold::has_percent_escape(text) {
            if at_limit {
                return Ok(vec![whole]);
            }
            match fold::percent_decode(text) {
                Ok(view) => {
                    self.charge(view.text.len())?;
                    self.layer += 1;
                    let json = self.json_is_sensitive(&view.text, depth);
                    let inner = self.spans(&view.text, depth);
                    self.layer -= 1;
                    if json == Some(true) {
                        return Ok(vec![whole]);
                    }
                    for span in inner? {
                        match view.original(span.start, span.end) {
                            Some((start, end)) => out.push(Span { start, end, ..span }),
                            None => return Ok(vec![whole]),
                        }
                    }
                }
                Err(bytes) => {
                    self.charge(bytes.len())?;
                    if self.decoded_is_sensitive(&decode::text_of(&bytes), depth)? {
                        return Ok(vec![whole]);
                    }
                }
            }
        }
        // Every blob's decoding is scanned in one pass over their concatenation (so many small
        // blobs cost what one large one does), then each finding is traced to its blob.
        let mut joined = String::new();
        let mut parts: Vec<(usize, usize, usize, usize)> = Vec::new();
        for (start, end) in self.scrubber.detectors.blobs(text) {
            let Some(token) = text.get(start..end) else {
                continue;
            };
            let span = Span {
                start,
                end,
                kind: Kind::Encoded,
            };
            for bytes in decode::decodings(token) {
                if at_limit {
                    if std::str::from_utf8(&bytes).is_ok() {
                        out.push(span);
                        break;
                    }
                    continue;
                }
                self.charge(bytes.len())?;
                let decoded = decode::text_of(&bytes);
                self.layer += 1;
                let json = self.json_is_sensitive(&decoded, depth);
                self.layer -= 1;
                match json {
                    Some(true) => {
                        out.push(span);
                        break;
                    }
                    Some(false) => {}
                    None => {
                        let at = joined.len();
                        joined.push_str(&decoded);
                        parts.push((start, end, at, joined.len()));
                        // No detector matches across a blank line.
                        joined.push_str("\n\n");
                    }
                }
            }
        }
        if !parts.is_empty() {
            self.layer += 1;
            let inner = self.spans(&joined, depth);
            self.layer -= 1;
            for found in inner? {
                let first = parts.partition_point(|&(_, _, _, part_end)| part_end <= found.start);
                for &(start, end, part_start, _) in parts.iter().skip(first) {
                    if part_start >= found.end {
                        break;
                    }
                    out.push(Span {
                        start,
                        end,
                        kind: Kind::Encoded,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Whether decoded text, one layer further in, holds anything the scrubber would change.
    fn decoded_is_sensitive(&mut self, decoded: &str, depth: usize) -> Result<bool, Exhausted> {
        self.layer += 1;
        let json = self.json_is_sensitive(decoded, depth);
        let spans = if json.is_some() {
            Ok(Vec::new())
        } else {
            self.spans(decoded, depth)
        };
        self.layer -= 1;
        Ok(json == Some(true) || !spans?.is_empty())
    }

    /// `Some` if `text` is a JSON object or array: whether scrubbing it changes it.
    fn json_is_sensitive(&mut self, text: &str, depth: usize) -> Option<bool> {
        if !text.trim_start().starts_with(['{', '[']) {
            return None;
        }
        let parsed: Value = serde_json::from_str(text).ok()?;
        Some(self.value(&parsed, Mode::Scan, depth).as_ref() != Some(&parsed))
    }

    /// Takes `bytes` from the decode budget.
    fn charge(&mut self, bytes: usize) -> Result<(), Exhausted> {
        match self.decode_left.checked_sub(bytes) {
            Some(left) => {
                self.decode_left = left;
                Ok(())
            }
            None => {
                self.decode_left = 0;
                Err(Exhausted)
            }
        }
    }

    /// The pseudonym of a whole value (normalised if it is one e-mail, phone or card).
    fn pseudonym_whole(&mut self, value: &str) -> Option<Value> {
        if value.len() > self.bytes_left {
            self.bytes_left = 0;
            return self.truncated();
        }
        self.bytes_left -= value.len();
        let normalised = self
            .scrubber
            .detectors
            .normalise_whole(value, &self.scrubber.policy.denylist);
        Some(Value::String(self.pseudonym_or(&normalised, REDACTED)))
    }
}

/// `text` with each span replaced by `replace(kind, found text)`.
fn render(text: &str, spans: &[Span], mut replace: impl FnMut(Kind, &str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        // Spans are on character boundaries; `get` only guards, dropping rather than leaking.
        out.push_str(text.get(at..span.start).unwrap_or_default());
        out.push_str(&replace(
            span.kind,
            text.get(span.start..span.end).unwrap_or_default(),
        ));
        at = span.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}
