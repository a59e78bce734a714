//! The tool registry: exact names, versions, strict argument schemas, effect classes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::model::BoxFuture;
use crate::name::{ToolName, skeleton};
use crate::process::ProcessLimits;
use crate::tool::{Tool, ToolContext, ToolOutput};
use crate::{SandboxError, ToolError};

/// What a tool can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Effect {
    /// Reads only. Allowed by the allowlist alone unless a policy says otherwise.
    ReadOnly,
    /// Changes state. Needs a policy that allows it; needs approval once the turn is tainted.
    Writes,
    /// Sends, exports, deletes, pays: always needs an authorized human approval.
    Sensitive,
}

impl Effect {
    /// The stable lowercase name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::Writes => "writes",
            Self::Sensitive => "sensitive",
        }
    }

    /// Whether the tool has effects (anything but [`Effect::ReadOnly`]).
    #[must_use]
    pub const fn has_effects(self) -> bool {
        !matches!(self, Self::ReadOnly)
    }
}

/// The per-call limits of one tool.
///
/// Built from [`ToolLimits::default`] with the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolLimits {
    /// Wall-clock limit for one call (default 10 s); the call is cancelled when it passes.
    pub timeout: Duration,
    /// The most output kept (default 64 KiB); longer output is cut and marked truncated.
    pub output_bytes: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            output_bytes: 64 * 1024,
        }
    }
}

impl ToolLimits {
    /// Sets [`ToolLimits::timeout`].
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ToolLimits::output_bytes`].
    #[must_use]
    pub const fn with_output_bytes(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes;
        self
    }
}

/// A tool's declaration: everything the gate needs to decide about a call before it runs.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    name: ToolName,
    version: u32,
    description: String,
    effect: Effect,
    network: bool,
    schema: Value,
    limits: ToolLimits,
    process: ProcessLimits,
}

impl ToolSpec {
    /// A tool called `name`, at `version`, with `effect`; by default it takes an empty object
    /// and uses no network.
    ///
    /// # Errors
    /// [`SandboxError::InvalidToolName`] outside the name grammar.
    pub fn new(name: &str, version: u32, effect: Effect) -> Result<Self, SandboxError> {
        Ok(Self {
            name: ToolName::parse(name)?,
            version,
            description: String::new(),
            effect,
            network: false,
            schema: serde_json::json!({"type": "object", "additionalProperties": false}),
            limits: ToolLimits::default(),
            process: ProcessLimits::default(),
        })
    }

    /// What the tool does (shown to the model).
    #[must_use]
    pub fn description(mut self, text: &str) -> Self {
        text.clone_into(&mut self.description);
        self
    }

    /// The JSON Schema (draft 2020-12) of the arguments. It is checked when the tool is
    /// registered against a closed subset of JSON Schema: every schema names its `type`, the
    /// root's is `"object"`, every object says `"additionalProperties": false`, every array
    /// says what its `items` are, and only the keywords of each type are accepted (no `$ref`,
    /// combinators, conditionals, `not`, boolean schemas or pattern properties), so no value
    /// the schema admits carries a field it does not declare.
    #[must_use]
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = schema;
        self
    }

    /// Whether the tool reaches the network (it then gets an egress-guarded client, and only
    /// then).
    #[must_use]
    pub const fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// Per-call limits.
    #[must_use]
    pub const fn limits(mut self, limits: ToolLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Limits for the subprocesses the tool starts through [`ToolContext::command`].
    #[must_use]
    pub const fn process_limits(mut self, limits: ProcessLimits) -> Self {
        self.process = limits;
        self
    }

    /// The exact name.
    #[must_use]
    pub const fn name(&self) -> &ToolName {
        &self.name
    }

    /// The version, bound into every approval digest: a new version invalidates approvals.
    #[must_use]
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// The description.
    #[must_use]
    pub fn description_text(&self) -> &str {
        &self.description
    }

    /// The effect class.
    #[must_use]
    pub const fn effect(&self) -> Effect {
        self.effect
    }

    /// Whether the tool uses the network.
    #[must_use]
    pub const fn uses_network(&self) -> bool {
        self.network
    }

    /// The argument schema.
    #[must_use]
    pub const fn argument_schema(&self) -> &Value {
        &self.schema
    }

    /// The per-call limits.
    #[must_use]
    pub const fn call_limits(&self) -> ToolLimits {
        self.limits
    }

    /// The subprocess limits.
    #[must_use]
    pub const fn subprocess_limits(&self) -> ProcessLimits {
        self.process
    }
}

/// A registered tool: its declaration, its compiled schema and its implementation.
pub(crate) struct Registered {
    pub(crate) spec: ToolSpec,
    pub(crate) validator: jsonschema::Validator,
    pub(crate) tool: Arc<dyn Tool>,
}

impl Registered {
    pub(crate) fn run<'a>(
        &'a self,
        context: ToolContext,
        arguments: Value,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        self.tool.call(context, arguments)
    }
}

/// The tools an application offers, by exact name. Immutable once built; share it in an `Arc`.
pub struct Registry {
    tools: HashMap<Box<str>, Registered>,
    skeletons: HashMap<String, ToolName>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.tools.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("Registry").field("tools", &names).finish()
    }
}

/// What a requested name resolves to.
pub(crate) enum Lookup<'a> {
    Found(&'a Registered),
    /// Not registered; `lookalike` names the registered tool it imitates, if any.
    Unknown {
        lookalike: Option<&'a ToolName>,
    },
}

impl Registry {
    /// A builder.
    #[must_use]
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder { tools: Vec::new() }
    }

    pub(crate) fn lookup(&self, requested: &str) -> Lookup<'_> {
        // Exact bytes only: the map holds valid names, so anything else misses.
        match self.tools.get(requested) {
            Some(found) => Lookup::Found(found),
            None => Lookup::Unknown {
                lookalike: self.skeletons.get(&skeleton(requested)),
            },
        }
    }

    /// The declaration of `name`, if registered (exact match).
    #[must_use]
    pub fn spec(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.get(name).map(|r| &r.spec)
    }

    /// Every declaration, sorted by name.
    #[must_use]
    pub fn specs(&self) -> Vec<&ToolSpec> {
        let mut specs: Vec<&ToolSpec> = self.tools.values().map(|r| &r.spec).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }
}

/// Builds a [`Registry`].
pub struct RegistryBuilder {
    tools: Vec<(ToolSpec, Arc<dyn Tool>)>,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("tools", &self.tools.len())
            .finish()
    }
}

impl RegistryBuilder {
    /// Adds a tool.
    #[must_use]
    pub fn tool(mut self, spec: ToolSpec, tool: Arc<dyn Tool>) -> Self {
        self.tools.push((spec, tool));
        self
    }

    /// Compiles every schema and builds the registry.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateTool`] for a name registered twice; [`SandboxError::InvalidSchema`]
    /// for a schema outside the closed subset [`ToolSpec::schema`] describes, or that does not
    /// compile.
    pub fn build(self) -> Result<Registry, SandboxError> {
        let mut tools = HashMap::with_capacity(self.tools.len());
        let mut skeletons = HashMap::new();
        for (spec, tool) in self.tools {
            let name = spec.name.as_str();
            let invalid = |reason: String| SandboxError::InvalidSchema {
                tool: name.to_owned(),
                reason,
            };
            check_closed(&spec.schema, "#").map_err(invalid)?;
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&spec.schema)
                .map_err(|e| invalid(e.to_string()))?;
            skeletons.insert(skeleton(name), spec.name.clone());
            let key: Box<str> = name.into();
            if tools.contains_key(&key) {
                return Err(SandboxError::DuplicateTool(name.to_owned()));
            }
            tools.insert(
                key,
                Registered {
                    spec,
                    validator,
                    tool,
                },
            );
        }
        Ok(Registry { tools, skeletons })
    }
}

/// The only `$schema` a schema may declare (at its root): the draft the gate compiles with.
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Keywords that only annotate: allowed in every schema, their values are not schemas.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The keywords each type admits besides `type` and the annotations. Anything else — `$ref`,
/// `$defs`, `anyOf`, `oneOf`, `allOf`, `not`, `if`/`then`/`else`, `patternProperties`,
/// `dependentSchemas`, `unevaluatedProperties`, `propertyNames`, `contains`, unknown words — is
/// refused.
fn keywords_of(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "object" => &[
            "properties",
            "required",
            "additionalProperties",
            "minProperties",
            "maxProperties",
        ],
        "array" => &[
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "uniqueItems",
        ],
        "string" => &[
            "minLength",
            "maxLength",
            "pattern",
            "format",
            "enum",
            "const",
        ],
        "integer" | "number" => &[
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "enum",
            "const",
        ],
        "boolean" | "null" => &["enum", "const"],
        _ => return None,
    })
}

/// Checks that `schema` is in the closed subset of JSON Schema the gate accepts, so that no
/// value it admits can be an object with a property it does not declare, whatever the
/// spelling. An allowlist, not a search for open spellings:
///
/// - every schema (the root and each subschema) is a JSON object naming its `type`: boolean
///   schemas (`true`, `false`), `{}` and schemas without `type` are refused;
/// - the root's type is `"object"`; a `type` list may name only scalar types
///   (`"string"`, `"integer"`, `"number"`, `"boolean"`, `"null"`);
/// - each schema uses only the keywords of its type (see [`keywords_of`]) and annotations;
/// - an object schema says `"additionalProperties": false`, and its `properties` are schemas
///   of this subset;
/// - an array schema has `items`, a schema of this subset (or `false` after `prefixItems`).
fn check_closed(schema: &Value, path: &str) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err(format!("{path}: the root must be an object schema"));
    };
    if map.get("type") != Some(&Value::String("object".into())) {
        return Err(format!("{path}: the root must have \"type\": \"object\""));
    }
    match map.get("$schema") {
        None => {}
        Some(Value::String(uri)) if uri == DRAFT_2020_12 => {}
        Some(_) => return Err(format!("{path}: $schema must be {DRAFT_2020_12}")),
    }
    check_subschema(schema, path, true)
}

fn check_subschema(schema: &Value, path: &str, root: bool) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err(format!(
            "{path}: a schema must be an object with a \"type\" (boolean schemas are not allowed)"
        ));
    };
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(ty)) => vec![ty.as_str()],
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut types = Vec::with_capacity(list.len());
            for ty in list {
                match ty {
                    Value::String(ty) if !matches!(ty.as_str(), "object" | "array") => {
                        types.push(ty.as_str());
                    }
                    _ => {
                        return Err(format!(
                            "{path}: a \"type\" list may name only scalar types"
                        ));
                    }
                }
            }
            types
        }
        _ => return Err(format!("{path}: every schema must name its \"type\"")),
    };
    let mut allowed: Vec<&str> = vec!["type"];
    if root {
        allowed.push("$schema");
    }
    allowed.extend_from_slice(ANNOTATIONS);
    for ty in &types {
        let Some(words) = keywords_of(ty) else {
            return Err(format!("{path}: unknown type {ty:?}"));
        };
        allowed.extend_from_slice(words);
    }
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "{path}: keyword {key:?} is not allowed here (only a closed subset of JSON \
                 Schema is accepted)"
            ));
        }
    }
    match types.as_slice() {
        ["object"] => {
            if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Err(format!(
                    "{path}: objects must say \"additionalProperties\": false"
                ));
            }
            match map.get("properties") {
                None => {}
                Some(Value::Object(properties)) => {
                    for (name, property) in properties {
                        check_subschema(property, &format!("{path}/properties/{name}"), false)?;
                    }
                }
                Some(_) => return Err(format!("{path}: properties must be an object")),
            }
        }
        ["array"] => {
            let prefixed = match map.get("prefixItems") {
                None => false,
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        check_subschema(item, &format!("{path}/prefixItems/{i}"), false)?;
                    }
                    true
                }
                Some(_) => return Err(format!("{path}: prefixItems must be an array")),
            };
            match map.get("items") {
                Some(Value::Bool(false)) if prefixed => {}
                Some(items @ Value::Object(_)) => {
                    check_subschema(items, &format!("{path}/items"), false)?;
                }
                _ => {
                    return Err(format!(
                        "{path}: arrays must say what their items are (\"items\": a schema, or \
                         false after prefixItems)"
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tool::tool_fn;

    fn noop() -> Arc<dyn Tool> {
        tool_fn(|_, _| async { Ok(ToolOutput::text("ok")) })
    }

    fn build(schema: Value) -> Result<Registry, SandboxError> {
        Registry::builder()
            .tool(
                ToolSpec::new("t", 1, Effect::ReadOnly)
                    .unwrap()
                    .schema(schema),
                noop(),
            )
            .build()
    }

    /// A closed object with one property whose schema is `inner`.
    fn nested(inner: &Value) -> Value {
        json!({"type": "object", "additionalProperties": false, "properties": {"x": inner}})
    }

    #[test]
    fn every_spelling_of_an_open_object_is_refused_at_registration() {
        let closed = json!({"type": "object", "additionalProperties": false});
        let open_spellings = [
            // Open at the root.
            json!({"type": "object"}),
            json!({"type": "object", "additionalProperties": true}),
            json!({"type": "object", "additionalProperties": {}}),
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            json!({"type": "array", "items": closed}),
            json!({"properties": {}, "additionalProperties": false}),
            json!(true),
            json!({}),
            json!({"type": "object", "additionalProperties": false, "$schema":
                   "http://json-schema.org/draft-04/schema#"}),
            // Open inside.
            nested(&json!({"type": "object", "properties": {}})),
            nested(&json!({"type": ["object", "null"], "additionalProperties": false})),
            nested(&json!({"type": ["string", "object"]})),
            nested(&json!({})),
            nested(&json!(true)),
            nested(
                &json!({"properties": {"a": {"type": "string"}}, "additionalProperties": false}),
            ),
            nested(&json!({"type": "string", "not": {"type": "string"}})),
            nested(&json!({"not": {"type": "string"}})),
            nested(&json!({"anyOf": [{"type": "string"}, closed]})),
            nested(&json!({"type": "string", "anyOf": [{"type": "string"}, {"type": "object"}]})),
            nested(&json!({"type": "string", "oneOf": [{"type": "string"}]})),
            nested(&json!({"type": "string", "allOf": [{"type": "string"}]})),
            nested(&json!({"$ref": "#/$defs/open"})),
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"x": {"$ref": "#/$defs/open"}},
                   "$defs": {"open": {"type": "object"}}}),
            nested(&json!({"$ref": "https://example.com/s.json"})),
            json!({"type": "object", "additionalProperties": false,
                   "patternProperties": {".*": {}}}),
            json!({"type": "object", "additionalProperties": false,
                   "unevaluatedProperties": false}),
            nested(&json!({"type": "object", "unevaluatedProperties": false})),
            json!({"type": "object", "additionalProperties": false,
                   "if": {"type": "object"}, "then": {"type": "object"}, "else": true}),
            json!({"type": "object", "additionalProperties": false,
                   "dependentSchemas": {"x": {"type": "object"}}}),
            json!({"type": "object", "additionalProperties": false,
                   "propertyNames": {"type": "string"}}),
            nested(&json!({"type": "array"})),
            nested(&json!({"type": "array", "items": true})),
            nested(&json!({"type": "array", "items": {}})),
            nested(&json!({"type": "array", "items": {"type": "object"}})),
            nested(&json!({"type": "array", "prefixItems": [{"type": "string"}]})),
            nested(&json!({"type": "array", "items": false})),
            nested(&json!({"type": "array", "items": {"type": "string"}, "contains": closed})),
            // Unknown words and unknown types.
            nested(&json!({"type": "string", "x-open": true})),
            nested(&json!({"type": "text"})),
            json!({"type": "object", "additionalProperties": false, "$id": "urn:x"}),
        ];
        for bad in open_spellings {
            assert!(
                matches!(build(bad.clone()), Err(SandboxError::InvalidSchema { .. })),
                "{bad} must be refused"
            );
        }
        // Positive control: a closed schema with every accepted shape registers.
        let accepted = json!({
            "$schema": DRAFT_2020_12,
            "title": "arguments",
            "type": "object", "additionalProperties": false,
            "required": ["amount"], "minProperties": 1,
            "properties": {
                "amount": {"type": "integer", "minimum": 1, "maximum": 5000, "description": "cents"},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.5},
                "memo": {"type": ["string", "null"], "maxLength": 100},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "flag": {"type": "boolean", "default": false},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"},
                         "maxItems": 5, "uniqueItems": true},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                         "items": false},
                "lines": {"type": "array", "items": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"sku": {"type": "string"}}
                }}
            }
        });
        assert!(build(accepted).is_ok());
        assert!(build(nested(&json!({"type": "integer"}))).is_ok());
        assert!(build(closed).is_ok());
    }

    #[test]
    fn names_match_exactly_and_lookalikes_are_reported_not_matched() {
        let registry = Registry::builder()
            .tool(
                ToolSpec::new("send_email", 1, Effect::Sensitive).unwrap(),
                noop(),
            )
            .build()
            .unwrap();
        assert!(matches!(registry.lookup("send_email"), Lookup::Found(_)));
        for lookalike in [
            "Send_Email",
            "SEND_EMAIL",
            "ｓｅｎｄ_ｅｍａｉｌ",
            "send-email",
        ] {
            match registry.lookup(lookalike) {
                Lookup::Unknown { lookalike: Some(n) } => assert_eq!(n.as_str(), "send_email"),
                _ => panic!("{lookalike} must be unknown and reported as a look-alike"),
            }
        }
        assert!(matches!(
            registry.lookup("send_emaіl"),
            Lookup::Unknown { .. }
        ));
        assert!(matches!(
            registry.lookup("other"),
            Lookup::Unknown { lookalike: None }
        ));
    }

    #[test]
    fn duplicates_are_refused() {
        let r = Registry::builder()
            .tool(ToolSpec::new("t", 1, Effect::ReadOnly).unwrap(), noop())
            .tool(ToolSpec::new("t", 2, Effect::ReadOnly).unwrap(), noop())
            .build();
        assert!(matches!(r, Err(SandboxError::DuplicateTool(_))));
    }
}
