//! The proxy's own answers: short HTML pages that say what happened and
//! what to do about it.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::Body;

/// A body the proxy made itself.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTML page with `status`, a title and one paragraph (plain text,
/// escaped here).
pub fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{p}</p><hr><p>vmctl-https</p></body></html>\n",
        t = escape(title),
        p = escape(text)
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(html))
        .expect("static headers are valid")
}

/// No VM by that name (or not one the caller may see: the same page, so
/// a stranger cannot tell a private VM from a missing one).
pub fn not_found(host: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "No such site",
        &format!("There is no VM published at {host}."),
    )
}

/// A private VM and no session.
pub fn login_required(name: &str, host: &str) -> Response<Body> {
    page(
        StatusCode::UNAUTHORIZED,
        "Login required",
        &format!(
            "The VM {name} is private. Its owner logs in by running `vmctl login {name}` \
             on the host and opening the link it prints (https://{host}/.vmctl/login?token=...)."
        ),
    )
}

/// A login link that is unknown, used or expired.
pub fn bad_login(name: &str) -> Response<Body> {
    page(
        StatusCode::FORBIDDEN,
        "Login link not valid",
        &format!(
            "This login link is unknown, was used already or has expired. \
             Run `vmctl login {name}` again for a new one."
        ),
    )
}

/// The VM is not running.
pub fn stopped(name: &str, state: &str) -> Response<Body> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "VM not running",
        &format!("The VM {name} is {state}. Its owner can start it with `vmctl start {name}`."),
    )
}

/// The VM did not answer.
pub fn bad_gateway(name: &str, port: u16, why: &str) -> Response<Body> {
    page(
        StatusCode::BAD_GATEWAY,
        "VM not answering",
        &format!(
            "The VM {name} is running but nothing answered on its port {port} ({why}). \
             Is a web server listening there? (`vmctl publish {name} --port P` picks another port.)"
        ),
    )
}

/// vmctld could not be asked.
pub fn unavailable() -> Response<Body> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The proxy cannot reach vmctld right now; try again in a moment.",
    )
}

/// The Host header names another site than the TLS connection (SNI).
pub fn misdirected() -> Response<Body> {
    page(
        StatusCode::MISDIRECTED_REQUEST,
        "Misdirected request",
        "The Host of this request does not match the name this connection was opened for.",
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
