//! The model interface: what an agent's language model may do, which is *propose* tool calls.
//!
//! A [`Model`] reads the transcript ([`Message`]s) and the tools it may name
//! ([`ToolDescription`]s) and answers with a [`ModelReply`]: some text and zero or more proposed
//! [`ToolCallRequest`]s. Two implementations ship here:
//!
//! - [`OpenAiCompatible`], a client for any server that speaks the OpenAI chat-completions wire
//!   format (OpenAI itself, or a local llama.cpp or Ollama server at a configurable base URL);
//! - [`ScriptedModel`], a deterministic script for tests and demos.
//!
//! # Security
//!
//! - **Model output is untrusted.** A reply only *proposes* calls. Every proposed call still goes
//!   through the gate: exact tool names, the agent's allowlist, the tool's strict argument
//!   schema, policies, taint, and — where a policy asks for one — a human approval.
//! - **The model's text can never carry an approval.** [`ModelReply`] has no field that could
//!   hold one, and nothing in this module reads meaning into text such as `"APPROVED"` or an
//!   argument named `approved`: text stays text, arguments stay arguments for the schema to judge.
//!   Approvals arrive only through the authenticated approval API.
//! - **Malformed output fails closed.** Tool-call arguments arrive on the wire as a JSON
//!   *string*. When that string is not valid JSON it is kept as [`serde_json::Value::String`]
//!   holding the raw text; every tool's argument schema has an object at its root, so the gate's
//!   schema validation refuses the call. An absent, `null` or blank arguments string is read as
//!   the empty object `{}`, which the schema then judges like any other arguments.
//! - **The client is infrastructure, not a tool.** [`OpenAiCompatible`] talks to an endpoint the
//!   operator configured, so it uses `reqwest` directly rather than the egress guard that fences
//!   tools. It still refuses to follow redirects, ignores proxy environment variables, accepts
//!   only `http`/`https` base URLs without embedded credentials, bounds every exchange by a
//!   timeout, and reads at most [`OpenAiCompatible::max_response_bytes`] of a response,
//!   incrementally, before giving up.
//! - **Errors carry no secrets.** [`ModelError`] messages never include the API key or a response
//!   body (not even the fragment a JSON parser would quote); a failed status is reported as its
//!   number alone. The key is held in a type whose `Debug` is `[redacted]` and that is zeroized on
//!   drop, and the `Authorization` header is marked sensitive.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A boxed, sendable future, as returned by [`Model::complete`] (and by tools).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One tool call the model proposes. It is a proposal: the gate decides whether it runs.
///
/// Built with [`ToolCallRequest::new`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ToolCallRequest {
    /// The id that ties the call to its [`Message::ToolResult`]. Unique within one reply.
    pub call_id: String,
    /// The tool name exactly as the model wrote it; the gate matches it exactly.
    pub tool: String,
    /// The arguments. Normally an object; a [`Value::String`] holding raw text when the model's
    /// arguments were not valid JSON (the gate's schema validation refuses those).
    pub arguments: Value,
}

impl ToolCallRequest {
    /// A proposed call of `tool` with `arguments`, identified by `call_id`.
    #[must_use]
    pub fn new(call_id: impl Into<String>, tool: impl Into<String>, arguments: Value) -> Self {
        Self {
            call_id: call_id.into(),
            tool: tool.into(),
            arguments,
        }
    }
}

/// One entry of the transcript sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Operator instructions.
    System(String),
    /// What the user said.
    User(String),
    /// What the model said earlier: text, proposed calls, or both.
    Assistant {
        /// The model's text, if any.
        text: Option<String>,
        /// The calls it proposed.
        calls: Vec<ToolCallRequest>,
    },
    /// The outcome of one call (its output, or why it was refused), fed back to the model.
    ToolResult {
        /// The [`ToolCallRequest::call_id`] this answers.
        call_id: String,
        /// The content the model sees.
        content: String,
    },
}

/// A tool as the model is told about it.
///
/// Built from a registered tool (`ToolDescription::from(&spec)`) or with
/// [`ToolDescription::new`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ToolDescription {
    /// The exact tool name.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// The tool's argument JSON Schema.
    pub parameters: Value,
}

impl ToolDescription {
    /// The tool `name`, described to the model as `description`, taking arguments that match
    /// the JSON Schema `parameters`.
    #[must_use]
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

impl From<&crate::registry::ToolSpec> for ToolDescription {
    /// What the model is told about a registered tool: its name, description and schema.
    fn from(spec: &crate::registry::ToolSpec) -> Self {
        Self {
            name: spec.name().as_str().to_owned(),
            description: spec.description_text().to_owned(),
            parameters: spec.argument_schema().clone(),
        }
    }
}

/// What the model answered.
///
/// There is deliberately no field that could carry an approval: a model can only propose.
///
/// Built with [`ModelReply::new`], or from [`ModelReply::default`] (no text, no calls) with
/// [`with_text`](ModelReply::with_text) and [`with_calls`](ModelReply::with_calls).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ModelReply {
    /// The model's text, if it said anything.
    pub text: Option<String>,
    /// The calls it proposes, in order.
    pub calls: Vec<ToolCallRequest>,
}

impl ModelReply {
    /// A reply with `text` (if any) proposing `calls`, in order.
    #[must_use]
    pub const fn new(text: Option<String>, calls: Vec<ToolCallRequest>) -> Self {
        Self { text, calls }
    }

    /// Sets [`ModelReply::text`].
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Sets [`ModelReply::calls`].
    #[must_use]
    pub fn with_calls(mut self, calls: Vec<ToolCallRequest>) -> Self {
        self.calls = calls;
        self
    }
}

/// A language model that proposes tool calls.
pub trait Model: Send + Sync {
    /// Answers the transcript, naming only tools from `tools` (the gate checks that it did).
    ///
    /// # Errors
    ///
    /// A [`ModelError`] when the model cannot be asked or its answer cannot be read.
    fn complete<'a>(
        &'a self,
        messages: &'a [Message],
        tools: &'a [ToolDescription],
    ) -> BoxFuture<'a, Result<ModelReply, ModelError>>;
}

/// Why a model could not be asked, or its answer could not be read.
///
/// No message includes the API key or any part of a response body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The base URL is unusable (not `http`/`https`, no host, embedded credentials, a query or a
    /// fragment). The URL itself is not repeated: it may hold secrets.
    #[error("invalid model base url: {0}")]
    InvalidBaseUrl(&'static str),
    /// A setting is unusable (an API key that cannot be a header value, a non-finite
    /// temperature).
    #[error("invalid model client setting: {0}")]
    InvalidConfig(&'static str),
    /// The HTTP client could not be built.
    #[error("model http client could not be built")]
    Client(#[source] reqwest::Error),
    /// The request could not be sent or the response could not be read (connection refused,
    /// reset, TLS failure).
    #[error("model request failed")]
    Transport(#[source] reqwest::Error),
    /// The exchange took longer than the configured timeout.
    #[error("model request timed out")]
    Timeout,
    /// The server answered with a non-success status (redirects are not followed, so a 3xx
    /// lands here too). The body is not read.
    #[error("model server answered with status {0}")]
    Status(u16),
    /// The response body is larger than the configured limit.
    #[error("model response exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The response is not a chat-completions answer this client can read.
    #[error("invalid model response: {0}")]
    InvalidResponse(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Scripted model
// ---------------------------------------------------------------------------------------------

type Responder = Box<dyn Fn(&[Message]) -> ModelReply + Send + Sync + 'static>;

enum Step {
    Reply(ModelReply),
    Respond(Responder),
}

/// A deterministic model for tests and demos: it plays its steps in order, one per call.
///
/// Each step is a fixed [`ModelReply`] or a closure that sees the transcript (so a demo can react
/// to the latest [`Message::ToolResult`]). After the last step every call answers with the text
/// `"done"` and no calls. Steps advance atomically, so concurrent callers each get a different
/// step.
///
/// ```
/// use tool_sandbox::model::{Message, Model, ModelReply, ScriptedModel, ToolCallRequest};
///
/// let model = ScriptedModel::new()
///     .then_reply(ModelReply::default().with_calls(vec![ToolCallRequest::new(
///         "call_1",
///         "read_file",
///         serde_json::json!({ "path": "notes.txt" }),
///     )]))
///     .then(|messages: &[Message]| {
///         let seen = messages.iter().rev().find_map(|m| match m {
///             Message::ToolResult { content, .. } => Some(content.clone()),
///             _ => None,
///         });
///         ModelReply::new(seen, Vec::new())
///     });
/// # let _ = &model as &dyn Model;
/// ```
pub struct ScriptedModel {
    steps: Vec<Step>,
    next: AtomicUsize,
}

impl ScriptedModel {
    /// An empty script: every call answers `"done"` with no calls.
    #[must_use]
    pub fn new() -> Self {
        Self {
            steps: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Appends a step that answers with `reply`.
    #[must_use]
    pub fn then_reply(mut self, reply: ModelReply) -> Self {
        self.steps.push(Step::Reply(reply));
        self
    }

    /// Appends a step that answers with whatever `respond` makes of the transcript.
    #[must_use]
    pub fn then(
        mut self,
        respond: impl Fn(&[Message]) -> ModelReply + Send + Sync + 'static,
    ) -> Self {
        self.steps.push(Step::Respond(Box::new(respond)));
        self
    }

    /// How many steps have not been played yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.steps
            .len()
            .saturating_sub(self.next.load(Ordering::Acquire))
    }

    fn play(&self, messages: &[Message]) -> ModelReply {
        // Claim a step index atomically; saturating so that the counter never wraps back into
        // the script.
        let claimed = self
            .next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            });
        let index = match claimed {
            Ok(n) | Err(n) => n,
        };
        match self.steps.get(index) {
            Some(Step::Reply(reply)) => reply.clone(),
            Some(Step::Respond(respond)) => respond(messages),
            None => ModelReply {
                text: Some("done".to_owned()),
                calls: Vec::new(),
            },
        }
    }
}

impl Default for ScriptedModel {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("steps", &self.steps.len())
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Model for ScriptedModel {
    fn complete<'a>(
        &'a self,
        messages: &'a [Message],
        _tools: &'a [ToolDescription],
    ) -> BoxFuture<'a, Result<ModelReply, ModelError>> {
        let reply = self.play(messages);
        Box::pin(async move { Ok(reply) })
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible client
// ---------------------------------------------------------------------------------------------

/// The default timeout of one model exchange: 60 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The default limit on a response body: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An API key: `Debug` prints `[redacted]`, and the bytes are zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A client for an OpenAI-compatible chat-completions server.
///
/// It POSTs to `{base_url}/chat/completions`, so the base URL is what the server documents as its
/// OpenAI base, e.g. `http://127.0.0.1:8080/v1` for llama.cpp's server,
/// `http://127.0.0.1:11434/v1` for Ollama, `https://api.openai.com/v1` for OpenAI (a trailing
/// slash makes no difference).
///
/// This is infrastructure the operator configures, not a tool, so it uses `reqwest` directly and
/// not the egress guard. Redirects are not followed and proxy environment variables are ignored.
///
/// ```no_run
/// # async fn demo() -> Result<(), tool_sandbox::model::ModelError> {
/// use std::time::Duration;
/// use tool_sandbox::model::{Message, Model, OpenAiCompatible};
///
/// let model = OpenAiCompatible::new("http://127.0.0.1:8080/v1", "qwen2.5-7b-instruct")?
///     .timeout(Duration::from_secs(30))
///     .temperature(0.0);
/// let reply = model.complete(&[Message::User("List my files.".to_owned())], &[]).await?;
/// // `reply.calls` are proposals: hand them to the gate.
/// # let _ = reply;
/// # Ok(())
/// # }
/// ```
pub struct OpenAiCompatible {
    endpoint: Url,
    model: String,
    api_key: Option<ApiKey>,
    timeout: Duration,
    max_response_bytes: usize,
    temperature: Option<f32>,
    client: reqwest::Client,
    generated_ids: AtomicU64,
}

impl OpenAiCompatible {
    /// A client for the server at `base_url`, asking for `model`.
    ///
    /// # Errors
    ///
    /// [`ModelError::InvalidBaseUrl`] when `base_url` does not parse, is not `http`/`https`, has
    /// no host, or carries credentials, a query or a fragment; [`ModelError::Client`] when the
    /// HTTP client cannot be built.
    pub fn new(base_url: &str, model: &str) -> Result<Self, ModelError> {
        let endpoint = chat_completions_url(base_url)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ModelError::Client)?;
        Ok(Self {
            endpoint,
            model: model.to_owned(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            temperature: None,
            client,
            generated_ids: AtomicU64::new(0),
        })
    }

    /// Sends `Authorization: Bearer <key>`: a [`SecretString`](secrecy::SecretString), or a
    /// `String` / `&str` (moved or copied into one). The key is zeroized when the client is
    /// dropped, and never shown by `Debug`.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<secrecy::SecretString>) -> Self {
        let key: secrecy::SecretString = key.into();
        self.api_key = Some(ApiKey(
            secrecy::ExposeSecret::expose_secret(&key).to_owned(),
        ));
        self
    }

    /// The limit on one whole exchange, from connecting to the last byte of the body (default
    /// [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body accepted (default [`DEFAULT_MAX_RESPONSE_BYTES`]); a larger
    /// one is [`ModelError::ResponseTooLarge`], detected while reading, not after buffering it.
    #[must_use]
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// The sampling temperature to send (by default none is sent and the server decides).
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// The full URL requests are POSTed to.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    async fn exchange(
        &self,
        messages: &[Message],
        tools: &[ToolDescription],
    ) -> Result<ModelReply, ModelError> {
        let body = self.request_body(messages, tools)?;
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .json(&body);
        if let Some(key) = &self.api_key {
            // Sized up front so that no reallocation leaves an unzeroized copy behind.
            let mut header = Zeroizing::new(String::with_capacity("Bearer ".len() + key.0.len()));
            header.push_str("Bearer ");
            header.push_str(&key.0);
            let mut value = HeaderValue::from_str(&header)
                .map_err(|_| ModelError::InvalidConfig("api key is not a valid header value"))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        tracing::debug!(
            endpoint = %self.endpoint,
            model = %self.model,
            messages = messages.len(),
            tools = tools.len(),
            "asking the model"
        );

        let mut response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            // The body is not read: it is the server's, and errors must not carry it.
            tracing::debug!(status = status.as_u16(), "model server refused the request");
            return Err(ModelError::Status(status.as_u16()));
        }

        let limit = self.max_response_bytes;
        let too_large = ModelError::ResponseTooLarge { limit };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if chunk.len() > limit.saturating_sub(bytes.len()) {
                return Err(too_large);
            }
            bytes.extend_from_slice(&chunk);
        }

        let parsed: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|_| ModelError::InvalidResponse("not a chat-completions answer"))?;
        self.reply_from_wire(parsed)
    }

    fn request_body<'a>(
        &'a self,
        messages: &'a [Message],
        tools: &'a [ToolDescription],
    ) -> Result<WireRequest<'a>, ModelError> {
        if self.temperature.is_some_and(|t| !t.is_finite()) {
            return Err(ModelError::InvalidConfig("temperature must be finite"));
        }
        Ok(WireRequest {
            model: &self.model,
            messages: messages.iter().map(WireMessage::from_message).collect(),
            tools: tools
                .iter()
                .map(|tool| WireTool {
                    kind: "function",
                    function: WireFunctionSpec {
                        name: &tool.name,
                        description: &tool.description,
                        parameters: &tool.parameters,
                    },
                })
                .collect(),
            temperature: self.temperature,
        })
    }

    fn reply_from_wire(&self, response: WireResponse) -> Result<ModelReply, ModelError> {
        let message = response
            .choices
            .into_iter()
            .next()
            .ok_or(ModelError::InvalidResponse("no choices"))?
            .message;
        let wire_calls = message.tool_calls.unwrap_or_default();

        // Ids the model supplied that are usable (present, non-empty, first of their kind).
        let mut taken: Vec<String> = Vec::with_capacity(wire_calls.len());
        let mut pending: Vec<(Option<String>, String, Value)> =
            Vec::with_capacity(wire_calls.len());
        for call in wire_calls {
            let function = call
                .function
                .ok_or(ModelError::InvalidResponse("tool call without a function"))?;
            let name = function
                .name
                .filter(|name| !name.is_empty())
                .ok_or(ModelError::InvalidResponse("tool call without a name"))?;
            let arguments = parse_arguments(&name, function.arguments);
            let id = call.id.filter(|id| !id.is_empty() && !taken.contains(id));
            if let Some(id) = &id {
                taken.push(id.clone());
            }
            pending.push((id, name, arguments));
        }

        let mut calls = Vec::with_capacity(pending.len());
        for (id, tool, arguments) in pending {
            let call_id = match id {
                Some(id) => id,
                None => self.generate_id(&taken),
            };
            taken.push(call_id.clone());
            calls.push(ToolCallRequest {
                call_id,
                tool,
                arguments,
            });
        }

        Ok(ModelReply {
            text: message.content.filter(|text| !text.is_empty()),
            calls,
        })
    }

    /// `call_<n>` from a per-client counter, skipping any id already used in this reply.
    fn generate_id(&self, taken: &[String]) -> String {
        loop {
            let n = self.generated_ids.fetch_add(1, Ordering::Relaxed);
            let id = format!("call_{n}");
            if !taken.contains(&id) {
                return id;
            }
        }
    }
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("temperature", &self.temperature)
            .finish_non_exhaustive()
    }
}

impl Model for OpenAiCompatible {
    fn complete<'a>(
        &'a self,
        messages: &'a [Message],
        tools: &'a [ToolDescription],
    ) -> BoxFuture<'a, Result<ModelReply, ModelError>> {
        Box::pin(async move {
            // reqwest's own timeout covers the exchange too; this one also bounds the body loop
            // whatever the transport does.
            match tokio::time::timeout(self.timeout, self.exchange(messages, tools)).await {
                Ok(result) => result,
                Err(_) => Err(ModelError::Timeout),
            }
        })
    }
}

/// `{base}/chat/completions`, whether or not `base` ends with a slash.
fn chat_completions_url(base_url: &str) -> Result<Url, ModelError> {
    let mut url = Url::parse(base_url).map_err(|_| ModelError::InvalidBaseUrl("not a url"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ModelError::InvalidBaseUrl("scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ModelError::InvalidBaseUrl("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ModelError::InvalidBaseUrl(
            "credentials belong in api_key, not the url",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ModelError::InvalidBaseUrl("query or fragment not allowed"));
    }
    url.path_segments_mut()
        .map_err(|()| ModelError::InvalidBaseUrl("not a base url"))?
        .pop_if_empty()
        .extend(["chat", "completions"]);
    Ok(url)
}

fn transport_error(error: reqwest::Error) -> ModelError {
    if error.is_timeout() {
        ModelError::Timeout
    } else {
        ModelError::Transport(error)
    }
}

/// Arguments from the wire: a JSON string is parsed; text that is not JSON is kept as a string
/// (the schema refuses it); absent, `null` or blank means `{}`; a server that already sent an
/// object or other JSON value has it passed through for the schema to judge.
fn parse_arguments(tool: &str, raw: Option<Value>) -> Value {
    match raw {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(Value::String(text)) if text.trim().is_empty() => {
            Value::Object(serde_json::Map::new())
        }
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(_) => {
                tracing::debug!(
                    tool,
                    "tool call arguments are not valid JSON; kept as a string"
                );
                Value::String(text)
            }
        },
        Some(other) => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    /// Left out when empty: some servers refuse an empty `tools` array.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// Always a string (empty when the model said nothing): some servers refuse `null`.
        content: &'a str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCallOut<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

impl<'a> WireMessage<'a> {
    fn from_message(message: &'a Message) -> Self {
        match message {
            Message::System(content) => Self::System { content },
            Message::User(content) => Self::User { content },
            Message::Assistant { text, calls } => Self::Assistant {
                content: text.as_deref().unwrap_or(""),
                tool_calls: calls
                    .iter()
                    .map(|call| WireCallOut {
                        id: &call.call_id,
                        kind: "function",
                        function: WireFunctionOut {
                            name: &call.tool,
                            // The wire wants the arguments as a JSON string.
                            arguments: call.arguments.to_string(),
                        },
                    })
                    .collect(),
            },
            Message::ToolResult { call_id, content } => Self::Tool {
                tool_call_id: call_id,
                content,
            },
        }
    }
}

#[derive(Serialize)]
struct WireCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionOut<'a>,
}

#[derive(Serialize)]
struct WireFunctionOut<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionSpec<'a>,
}

#[derive(Serialize)]
struct WireFunctionSpec<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireReplyMessage,
}

#[derive(Deserialize)]
struct WireReplyMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireCallIn>>,
}

#[derive(Deserialize)]
struct WireCallIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionIn>,
}

#[derive(Deserialize)]
struct WireFunctionIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_joins_with_and_without_trailing_slash() {
        for base in ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/"] {
            let url = chat_completions_url(base).unwrap();
            assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1/chat/completions");
        }
        let url = chat_completions_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/chat/completions");
    }

    #[test]
    fn arguments_that_are_not_json_stay_a_string() {
        assert_eq!(
            parse_arguments("t", Some(Value::String("{oops".to_owned()))),
            Value::String("{oops".to_owned())
        );
        assert_eq!(
            parse_arguments("t", Some(Value::String(" ".to_owned()))),
            serde_json::json!({})
        );
        assert_eq!(parse_arguments("t", None), serde_json::json!({}));
        assert_eq!(
            parse_arguments("t", Some(Value::String("{\"a\":1}".to_owned()))),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn api_key_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", ApiKey("sk-secret".to_owned())),
            "[redacted]"
        );
        let input = secrecy::SecretString::from("sk-secret");
        let client = OpenAiCompatible::new("http://127.0.0.1:8080/v1", "m")
            .expect("valid url")
            .api_key(input.clone());
        let shown = format!("{input:?} {client:?} {client:#?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
