//! The CLI's side of the HTTP API.

use std::time::Duration;

use serde_json::Value;

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("cannot reach the server at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("the server's answer is not what was expected: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Usage(String),
}

/// A client of one server.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    fn request(&self, method: &str, path: &str) -> (ureq::Request, String) {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        (req, url)
    }

    fn answer(
        url: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<String, ClientError> {
        match result {
            Ok(resp) => resp
                .into_string()
                .map_err(|e| ClientError::BadAnswer(e.to_string())),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                    .unwrap_or(body);
                Err(ClientError::Server { status, message })
            }
            Err(e) => Err(ClientError::Transport {
                url: url.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// GET `path`, as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let (req, url) = self.request("GET", path);
        let text = Self::answer(&url, req.call())?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// POST a JSON body to `path`.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let (req, url) = self.request("POST", path);
        let text = Self::answer(
            &url,
            req.set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}
