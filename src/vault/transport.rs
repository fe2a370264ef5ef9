//! vaultrs underneath: one [`Attempt`] is one try of one call at one Vault address, a
//! `vaultrs::client::Client` over that address's own `reqwest` client (our TLS settings, no
//! redirects) with every settings field set here, so vaultrs' settings builder (which panics
//! on a bad URL and reads `VAULT_*` when a field is left out) is never used. What vaultrs
//! answers, and how it fails, is sorted here into what the failover loop in `client.rs` needs:
//! a value, a Vault answer (status and body), or a transport failure.
//!
//! [`RawEndpoint`] is the one place that sends a call vaultrs has no function for (merge-PATCH
//! of KV data and metadata, the KV mount check, the seal status): a `rustify` endpoint sent
//! through the same vaultrs HTTP client, with vaultrs' own middleware (API version, token,
//! namespace, wrap TTL) plus the `Content-Type` a merge-PATCH needs, which vaultrs never sets.

use super::client::{Method, Request, Response};
use crate::secret::Secret;
use rustify::clients::reqwest::Client as HttpClient;
use rustify::endpoint::{Endpoint, MiddleWare};
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde_json::Value;
use std::sync::Arc;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::VaultClientSettings;
use vaultrs::error::ClientError;

/// One try at one address: what vaultrs' API functions take as their client.
pub(crate) struct Attempt {
    http: HttpClient,
    middle: EndpointMiddleware,
    settings: Arc<VaultClientSettings>,
}

impl vaultrs::client::Client for Attempt {
    fn http(&self) -> &HttpClient {
        &self.http
    }

    fn middle(&self) -> &EndpointMiddleware {
        &self.middle
    }

    fn settings(&self) -> &VaultClientSettings {
        &self.settings
    }

    fn set_token(&mut self, token: &str) {
        self.middle.token = token.to_string();
    }
}

impl Attempt {
    /// `base` is the address (with `tls_server_name` as its host when set), `http` its client.
    /// The token, namespace and wrap TTL travel as headers; vaultrs' middleware would panic on
    /// a value that cannot be a header, so they are checked first (the namespace when the
    /// settings are resolved, the token here).
    pub(crate) fn new(
        base: &str,
        http: reqwest::Client,
        settings: Arc<VaultClientSettings>,
        token: Option<&Secret>,
        wrap_ttl: Option<&str>,
    ) -> Result<Self, &'static str> {
        let token = token.map(|t| t.expose().to_string()).unwrap_or_default();
        if !header_safe(&token) {
            return Err("the Vault token holds characters that cannot be sent in an HTTP header (a line break, a control or non-ASCII character); check the token file or VAULT_TOKEN");
        }
        Ok(Attempt {
            http: HttpClient::new(base, http),
            middle: EndpointMiddleware {
                token,
                version: "v1".into(),
                wrap: wrap_ttl.map(str::to_string),
                namespace: settings.namespace.clone(),
            },
            settings,
        })
    }
}

/// Whether `value` can be an HTTP header value as vaultrs builds them (visible ASCII, spaces
/// and tabs).
pub(crate) fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// vaultrs' settings with every field set: nothing left for its builder to fill from
/// `VAULT_*`. Only `address`, `namespace` and `timeout` are read by the API functions; TLS
/// lives in the `reqwest` client each [`Attempt`] carries.
pub(crate) fn vaultrs_settings(
    address: &url::Url,
    namespace: Option<String>,
    timeout: std::time::Duration,
    skip_verify: bool,
) -> VaultClientSettings {
    VaultClientSettings {
        address: address.clone(),
        ca_certs: Vec::new(),
        identity: None,
        timeout: Some(timeout),
        token: String::new(),
        verify: !skip_verify,
        version: 1,
        wrapping: false,
        namespace,
        proxy: None,
    }
}

/// How one try ended, short of a value.
pub(crate) enum Failure {
    /// Vault answered outside 2xx: status and body (`errors` for an API error).
    Answer(Response),
    /// No complete answer: `connected` when the request may have reached the server.
    Transport { detail: String, connected: bool, error: Option<reqwest::Error> },
    /// A 2xx answer whose body is not what the call expects, or a request that could not be
    /// built.
    Invalid(String),
}

/// Sorts a vaultrs error. Response bodies are kept only inside [`Failure::Answer`] (for the
/// 404 of a deleted KV version) and never put into a message: they may hold secrets.
pub(crate) fn classify(err: ClientError) -> Failure {
    use rustify::errors::ClientError as Rest;
    match err {
        ClientError::APIError { code, errors } => {
            Failure::Answer(Response { status: code, body: serde_json::json!({ "errors": errors }) })
        }
        ClientError::RestClientError { source } => match source {
            Rest::ServerResponseError { code, content } => {
                let body = content.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or(Value::Null);
                Failure::Answer(Response { status: code, body })
            }
            Rest::RequestError { source, .. } => match source.downcast::<reqwest::Error>() {
                Ok(e) => Failure::Transport { detail: String::new(), connected: !e.is_connect(), error: Some(e) },
                Err(other) => Failure::Transport { detail: chain(other.as_ref()), connected: true, error: None },
            },
            Rest::ResponseError { source } => match source.downcast::<reqwest::Error>() {
                Ok(e) => Failure::Transport { detail: String::new(), connected: true, error: Some(e) },
                Err(other) => Failure::Transport { detail: chain(other.as_ref()), connected: true, error: None },
            },
            Rest::ResponseParseError { source, .. } => Failure::Invalid(shape_error(source.as_ref())),
            Rest::ResponseConversionError { .. } => Failure::Invalid("the body is not UTF-8".into()),
            other => Failure::Invalid(format!("the request could not be built ({})", chain(&other))),
        },
        ClientError::JsonParseError { source } => Failure::Invalid(shape_error(&source)),
        ClientError::ResponseEmptyError => Failure::Invalid("the answer has no auth section".into()),
        ClientError::ResponseDataEmptyError => Failure::Invalid("the answer has no data".into()),
        ClientError::ResponseWrapError => Failure::Invalid("the answer has no wrap_info".into()),
        other => Failure::Invalid(chain(&other)),
    }
}

/// A body of the wrong shape, said without quoting it: serde's message can quote a value,
/// and a value may be a secret.
fn shape_error(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<serde_json::Error>() {
        Some(e) => format!(
            "the body does not have the expected shape ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
        None => "the body does not have the expected shape".into(),
    }
}

/// An error and its causes on one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// A call vaultrs has no function for, sent through its HTTP client. The answer comes back
/// whole: status and JSON body.
pub(crate) struct RawEndpoint<'a> {
    pub req: &'a Request,
}

impl Endpoint for RawEndpoint<'_> {
    type Response = Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        let path = self.req.path.trim_start_matches('/');
        path.split_once('?').map_or(path, |(p, _)| p).to_string()
    }

    fn method(&self) -> RequestMethod {
        match self.req.method {
            // Sent as GET ?list=true, which every proxy passes.
            Method::Get | Method::List => RequestMethod::GET,
            Method::Post => RequestMethod::POST,
            Method::Put => RequestMethod::PUT,
            Method::Patch => RequestMethod::PATCH,
            Method::Delete => RequestMethod::DELETE,
        }
    }

    fn query(&self) -> Result<Option<String>, rustify::errors::ClientError> {
        let own = self.req.path.split_once('?').map(|(_, q)| q.to_string());
        Ok(match (self.req.method, own) {
            (Method::List, Some(q)) => Some(format!("{q}&list=true")),
            (Method::List, None) => Some("list=true".into()),
            (_, q) => q,
        })
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.req.body.as_ref().map(|b| b.to_string().into_bytes()))
    }
}

/// vaultrs' middleware, then the body's `Content-Type` (merge-PATCH is refused without
/// `application/merge-patch+json`).
pub(crate) struct RawMiddleware<'a> {
    pub inner: &'a EndpointMiddleware,
    pub patch: bool,
}

impl MiddleWare for RawMiddleware<'_> {
    fn request<E: Endpoint>(
        &self,
        endpoint: &E,
        req: &mut http::Request<Vec<u8>>,
    ) -> Result<(), rustify::errors::ClientError> {
        self.inner.request(endpoint, req)?;
        if !req.body().is_empty() {
            let content_type = if self.patch { "application/merge-patch+json" } else { "application/json" };
            req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        }
        Ok(())
    }

    fn response<E: Endpoint>(
        &self,
        _: &E,
        _: &mut http::Response<Vec<u8>>,
    ) -> Result<(), rustify::errors::ClientError> {
        Ok(())
    }
}

/// Sends `req` as a [`RawEndpoint`]: the 2xx answer with its status, or the failure.
pub(crate) async fn send_raw(attempt: &Attempt, req: &Request) -> Result<(Response, u16), ClientError> {
    let middleware = RawMiddleware { inner: &attempt.middle, patch: req.method == Method::Patch };
    let result = RawEndpoint { req }.with_middleware(&middleware).exec(&attempt.http).await?;
    let status = result.response.status().as_u16();
    let bytes = result.response.body();
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(bytes).map_err(|e| ClientError::JsonParseError { source: e })?
    };
    Ok((Response { status, body }, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_would_break_a_header_are_refused_not_panicked_on() {
        assert!(header_safe("hvs.CAESIQpZ7x4Lr2mT9kWq3vNbHdFg"));
        assert!(!header_safe("hvs.abc\n"));
        assert!(!header_safe("tökén"));
        let settings = Arc::new(vaultrs_settings(
            &url::Url::parse("http://127.0.0.1:1").unwrap(),
            None,
            std::time::Duration::from_secs(1),
            false,
        ));
        let bad = Secret::credential("line\nbreak");
        assert!(Attempt::new("http://127.0.0.1:1", reqwest::Client::new(), settings, Some(&bad), None).is_err());
    }

    #[test]
    fn raw_list_and_version_queries() {
        let list = Request::list("secret/metadata/keysync", "kv_list");
        assert_eq!(RawEndpoint { req: &list }.query().unwrap().as_deref(), Some("list=true"));
        let get = Request::get("secret/data/keysync/a?version=3", "kv_read");
        assert_eq!(RawEndpoint { req: &get }.path(), "secret/data/keysync/a");
        assert_eq!(RawEndpoint { req: &get }.query().unwrap().as_deref(), Some("version=3"));
    }

    #[test]
    fn a_deleted_versions_404_keeps_its_body() {
        let err = ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError {
                code: 404,
                content: Some(r#"{"data":{"data":null,"metadata":{"destroyed":true,"version":2}}}"#.into()),
            },
        };
        match classify(err) {
            Failure::Answer(r) => {
                assert_eq!(r.status, 404);
                assert_eq!(r.body.pointer("/data/metadata/version").and_then(Value::as_u64), Some(2));
            }
            _ => panic!("a 404 is an answer"),
        }
    }
}
