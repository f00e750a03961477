//! The machine's side of the API over HTTP (ureq): what `imgctl attest` calls. TPM work stays
//! with the caller; this only moves typed bodies.

use serde::de::DeserializeOwned;

use crate::api::{
    ActivateRequest, ChallengeRequest, ChallengeResponse, EnrolRequest, EnrolResponse,
    ErrorResponse, EvidenceRequest, EvidenceResponse, MAX_BODY,
};

/// A refusal or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: refused ({status} {kind}): {message}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// The refusal's kind (`nonce-used`, …), if the service refused.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Refused { kind, .. } => Some(kind),
            ClientError::Transport { .. } => None,
        }
    }
}

#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the service at `base`; an `https://` service must have a certificate the
    /// system's (webpki) roots trust.
    pub fn new(base: &str) -> Client {
        Self::with_tls(base, ureq::tls::TlsConfig::default())
    }

    /// A client that trusts only the CA certificates in `ca_pem` (PEM; `name` in messages)
    /// for an `https://` service.
    pub fn with_ca(base: &str, name: &str, ca_pem: &[u8]) -> Result<Client, ClientError> {
        let bad = |message: String| ClientError::Transport {
            url: base.to_owned(),
            message: format!("{name}: {message}"),
        };
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(ca_pem) {
            if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
                roots.push(c);
            }
        }
        if roots.is_empty() {
            return Err(bad("no PEM certificate".into()));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
            .build();
        Ok(Self::with_tls(base, tls))
    }

    fn with_tls(base: &str, tls: ureq::tls::TlsConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .tls_config(tls)
            .build()
            .new_agent();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent,
        }
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        let mut resp = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| transport(e.to_string()))?;
        if status != 200 {
            let e: ErrorResponse = serde_json::from_slice(&bytes).map_err(|_| {
                transport(format!(
                    "HTTP {status} with a body that is not an API error"
                ))
            })?;
            return Err(ClientError::Refused {
                url,
                status,
                kind: e.error,
                message: e.message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| transport(format!("answer: {e}")))
    }

    /// `GET /v1/machines/{id}/verdicts`: the machine's verdicts and releases on record.
    pub fn verdicts(&self, machine: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/machines/{machine}/verdicts", self.base);
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| transport(e.to_string()))?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64 * 16)
            .read_to_vec()
            .map_err(|e| transport(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| transport(format!("answer: {e}")))
    }

    pub fn enrol(&self, req: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
        self.post("/v1/enrol", req.to_json())
    }

    pub fn activate(&self, req: &ActivateRequest) -> Result<(), ClientError> {
        self.post::<serde_json::Value>("/v1/activate", req.to_json())
            .map(|_| ())
    }

    pub fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, ClientError> {
        self.post("/v1/challenge", req.to_json())
    }

    pub fn evidence(&self, req: &EvidenceRequest) -> Result<EvidenceResponse, ClientError> {
        self.post("/v1/evidence", req.to_json())
    }
}
