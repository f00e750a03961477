//! The HTTP front of [`Service`]: axum on the caller's tokio runtime. Each request body is
//! bounded by [`MAX_BODY`] before it is read, parsed into its typed value, and handled on a
//! blocking thread (the store is synchronous); answers are JSON, refusals
//! `{"error": kind, "message": …}` with a 4xx status. Requests run side by side: no lock in
//! the process, the database decides every race (`store`). With a certificate configured the
//! same routes are served over TLS ([`serve_tls`]: rustls with the ring provider, HTTP/1.1).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::api::{
    ActivateRequest, ChallengeRequest, EnrolRequest, ErrorResponse, EvidenceRequest, MAX_BODY,
};
use crate::service::{Refusal, Service};

type Shared = Arc<Service>;

/// The API's routes (service/openapi.yaml).
pub fn router(service: Service) -> axum::Router {
    let shared: Shared = Arc::new(service);
    axum::Router::new()
        .route("/v1/enrol", axum::routing::post(enrol))
        .route("/v1/activate", axum::routing::post(activate))
        .route("/v1/challenge", axum::routing::post(challenge))
        .route("/v1/evidence", axum::routing::post(evidence))
        .route("/v1/machines/{id}/verdicts", axum::routing::get(verdicts))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// How long a client may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` over TLS on `listener`: each connection's handshake (bounded by
/// [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/1.1 on it. A failed handshake closes that
/// connection only. Runs until accepting fails for good.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of descriptors or an aborted connection: the next accept may work.
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24) // ENFILE, EMFILE
}

fn json(status: StatusCode, v: &impl Serialize) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn answer<T: Serialize>(r: Result<T, Refusal>) -> Response {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => json(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &ErrorResponse {
                error: e.kind.to_owned(),
                message: e.message,
            },
        ),
    }
}

async fn run<T: Serialize + Send + 'static>(
    s: Shared,
    f: impl FnOnce(&Service) -> Result<T, Refusal> + Send + 'static,
) -> Response {
    let r = tokio::task::spawn_blocking(move || f(&s)).await;
    match r {
        Ok(r) => answer(r),
        Err(_) => answer::<()>(Err(Refusal {
            status: 500,
            kind: "internal",
            message: "request handler failed".into(),
        })),
    }
}

async fn enrol(State(s): State<Shared>, body: Bytes) -> Response {
    run(s, move |svc| svc.enrol(&EnrolRequest::parse(&body)?)).await
}

async fn activate(State(s): State<Shared>, body: Bytes) -> Response {
    run(s, move |svc| {
        svc.activate(&ActivateRequest::parse(&body)?)?;
        Ok(serde_json::json!({"activated": true}))
    })
    .await
}

async fn challenge(State(s): State<Shared>, body: Bytes) -> Response {
    run(s, move |svc| {
        svc.challenge(&ChallengeRequest::parse(&body)?)
    })
    .await
}

async fn evidence(State(s): State<Shared>, body: Bytes) -> Response {
    run(s, move |svc| {
        let req = EvidenceRequest::parse(&body)?;
        svc.evidence(&req, &body)
    })
    .await
}

async fn verdicts(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    run(s, move |svc| {
        let rows = svc.store.verdicts(&id)?;
        let releases = svc.store.releases(&id)?;
        Ok(serde_json::json!({
            "machine": id,
            "verdicts": rows.iter().map(|v| serde_json::json!({
                "id": v.id, "nonce": v.nonce, "accepted": v.accepted,
                "evidence_sha256": v.evidence_sha256, "policy": v.policy,
                "policy_version": v.policy_version, "log_checkpoint": v.log_checkpoint,
                "created_at": v.created_at,
                "findings": serde_json::from_str::<serde_json::Value>(&v.findings).unwrap_or_default(),
            })).collect::<Vec<_>>(),
            "releases": releases.iter().map(|(verdict, nonce, secret)| serde_json::json!({
                "verdict": verdict, "nonce": nonce, "secret": secret,
            })).collect::<Vec<_>>(),
        }))
    })
    .await
}
