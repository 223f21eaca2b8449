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

/// No VM by that name, or not one the caller may see: a private VM
/// without a session, or with a session of someone it is not shared with.
/// The same page (404) for all of them, so that a stranger cannot tell a
/// private VM from a missing one; for a name under the domain (`name`) it
/// says how an owner logs in.
pub fn not_found(host: &str, name: Option<&str>) -> Response<Body> {
    let mut text = format!("There is no VM published at {host} that you may visit.");
    if let Some(name) = name {
        text.push_str(&format!(
            " If it is a private VM of yours (or shared with you), log in: run \
             `vmctl login {name}` on the host and open the link it prints \
             (https://{host}/.vmctl/login?token=...)."
        ));
    }
    page(StatusCode::NOT_FOUND, "No such site", &text)
}

/// `GET /.vmctl/login?token=T`: asks before logging in, so that merely
/// opening a link (or a page elsewhere making the browser open one) logs
/// nobody in. `token` is hex digits (checked by the caller). The page may
/// not be framed (no clickjacking of its button) and sends no referrer.
pub fn confirm_login(name: &str, host: &str, token: &str) -> Response<Body> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Log in</title></head>\
         <body><h1>Log in to {host}</h1><p>This link logs this browser in as the user who \
         ran <code>vmctl login {name}</code>. Continue only if that was you, just now.</p>\
         <form method=\"post\" action=\"/.vmctl/login\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <button type=\"submit\">Log in</button></form><hr><p>vmctl-https</p></body></html>\n",
        host = escape(host),
        name = escape(name),
        token = escape(token),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        .body(full(html))
        .expect("static headers are valid")
}

/// A login form sent from another site.
pub fn cross_site_login(name: &str) -> Response<Body> {
    page(
        StatusCode::FORBIDDEN,
        "Login refused",
        &format!(
            "This login was sent from another site. Open the link `vmctl login {name}` \
             prints yourself and confirm there."
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
