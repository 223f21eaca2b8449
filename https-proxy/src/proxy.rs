//! One request: which VM, may this caller see it, and then forward it
//! (streaming both ways, upgrades included) with the headers the VM may
//! trust: `X-Forwarded-For/-Proto/-Host` set by the proxy and
//! `X-VmCtl-User/-Uid` for a logged-in caller. Anything a client sent
//! under those names is dropped first, and the session cookie never
//! reaches the VM.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{
    header::{self, HeaderName, HeaderValue},
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use crate::{
    acme::Challenges,
    gateway::{GatewayClient, GatewayError, Login},
    pages,
    route::{vm_name, Resolver, Route},
    session::{self, Session, Sessions},
    Body,
};

/// What the proxy asks vmctld (a trait so the request logic can be tested
/// against a table; the service uses [`GatewayClient`]).
pub trait Vmctld: Send + Sync + 'static {
    /// See [`GatewayClient::resolve_route`].
    fn resolve_route<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Route>, GatewayError>> + Send + 'a>>;
    /// See [`GatewayClient::redeem_login_token`].
    fn redeem_login_token<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Login>, GatewayError>> + Send + 'a>>;
}

impl Vmctld for GatewayClient {
    fn resolve_route<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Route>, GatewayError>> + Send + 'a>> {
        Box::pin(GatewayClient::resolve_route(self, name))
    }
    fn redeem_login_token<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Login>, GatewayError>> + Send + 'a>> {
        Box::pin(GatewayClient::redeem_login_token(self, token))
    }
}

/// The path prefix of the proxy's own pages on every site.
const OWN_PREFIX: &str = "/.vmctl/";

/// The path HTTP-01 challenges are fetched from.
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// How long connecting to a VM may take before the answer is 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle keepalive connections kept per VM. Below the number of requests a
/// busy site has in flight, connections are closed after each response and
/// reopened for the next (seen in `cargo xtask bench --https` at 32 with 64
/// clients: thousands of TIME_WAIT sockets towards the backend).
const POOL_MAX_IDLE_PER_VM: usize = 1024;

/// Request headers that belong to one hop (RFC 9110 7.6.1) and are never
/// forwarded as they came.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

thread_local! {
    /// The client of VMs, one per thread: its keepalive connections are
    /// driven by tasks on the thread that opened them, so a request reuses
    /// only connections its own thread drives (see [`crate::server`]'s
    /// workers).
    static CLIENT: Client<HttpConnector, Incoming> = {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_VM)
            .build(connector)
    };
}

/// The request logic shared by every connection.
pub struct Proxy {
    domain: String,
    vmctld: Arc<dyn Vmctld>,
    resolver: Resolver,
    sessions: Sessions,
    challenges: Arc<Challenges>,
}

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The VM name of the TLS server name (SNI), if any (HTTPS only).
    pub sni_name: Option<String>,
    /// Whether the connection is TLS (port 443) or plain (port 80).
    pub tls: bool,
}

impl Proxy {
    /// The proxy for `domain`, asking `vmctld`.
    pub fn new(
        domain: &str,
        vmctld: Arc<dyn Vmctld>,
        sessions: Sessions,
        challenges: Arc<Challenges>,
    ) -> Self {
        Self {
            domain: domain.to_string(),
            resolver: Resolver::new(vmctld.clone()),
            vmctld,
            sessions,
            challenges,
        }
    }

    /// The domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The VM name of `host` under this proxy's domain.
    pub fn vm_name(&self, host: &str) -> Option<String> {
        vm_name(host, &self.domain)
    }

    /// Whether vmctld knows a VM `name` (errors count as no).
    pub async fn is_known(&self, name: &str) -> bool {
        matches!(self.resolver.resolve(name).await, Ok(Some(_)))
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let host = request_host(&req).unwrap_or_default();
        if !conn.tls {
            return self.plain_http(&req, &host);
        }
        let Some(name) = self.vm_name(&host) else {
            return pages::not_found(&host, None);
        };
        if conn.sni_name.as_ref().is_some_and(|sni| *sni != name) {
            return pages::misdirected();
        }
        if req.uri().path() == "/.vmctl/login" {
            return self.login(req, &name, &host).await;
        }
        if req.uri().path().starts_with(OWN_PREFIX) {
            return pages::not_found(&host, Some(&name));
        }
        let route = match self.resolver.resolve(&name).await {
            Ok(Some(route)) => route,
            Ok(None) => return pages::not_found(&host, Some(&name)),
            Err(e) => {
                tracing::warn!("resolving {name}: {e}");
                return pages::unavailable();
            }
        };
        let cookies = req.headers().get_all(header::COOKIE);
        let session = self.sessions.from_cookies(
            cookies.iter().filter_map(|v| v.to_str().ok()),
            SystemTime::now(),
        );
        match (&session, route.public) {
            (_, true) => {}
            (Some(s), false) if route.admits(s.uid) => {}
            (_, false) => return pages::not_found(&host, Some(&name)),
        }
        if route.state != "running" {
            return pages::stopped(&name, &route.state);
        }
        let Some(ip) = route.ipv4 else {
            return pages::bad_gateway(&name, route.port, "it has no network address");
        };
        let backend = SocketAddr::new(IpAddr::V4(ip), route.port);
        self.forward(req, conn, &host, backend, session.as_ref(), &route)
            .await
    }

    /// Port 80: ACME challenges, else a redirect to HTTPS.
    fn plain_http(&self, req: &Request<Incoming>, host: &str) -> Response<Body> {
        if let Some(token) = req.uri().path().strip_prefix(ACME_PREFIX) {
            return match self.challenges.get(token) {
                Some(key_authorization) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(pages::full(key_authorization))
                    .expect("static headers are valid"),
                None => pages::not_found(host, None),
            };
        }
        let Some(name) = self.vm_name(host) else {
            return pages::not_found(host, None);
        };
        let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let location = format!("https://{name}.{}{path}", self.domain);
        match HeaderValue::try_from(location) {
            Ok(location) => Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header(header::LOCATION, location)
                .body(pages::full(""))
                .expect("the location was checked"),
            Err(_) => pages::not_found(host, None),
        }
    }

    /// `/.vmctl/login`. `GET ?token=T` (the link `vmctl login` prints)
    /// only shows a page asking to confirm; the form on it `POST`s the
    /// token, which is exchanged for a session cookie, and the browser is
    /// sent to `/` (the token leaves the address bar and history). A POST
    /// from another site (its `Origin` or `Sec-Fetch-Site` says so) is
    /// refused: a page elsewhere cannot log a visitor in under its own
    /// link (login CSRF); the confirmation page may not be framed.
    async fn login(&self, req: Request<Incoming>, name: &str, host: &str) -> Response<Body> {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            let token = form_value(req.uri().query().unwrap_or(""), "token");
            return match token.filter(|t| valid_token(t)) {
                Some(token) => pages::confirm_login(name, host, token),
                None => pages::bad_login(name),
            };
        }
        if req.method() != Method::POST {
            return pages::bad_login(name);
        }
        if !same_origin(req.headers(), host) {
            return pages::cross_site_login(name);
        }
        let body = match Limited::new(req.into_body(), MAX_LOGIN_FORM)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return pages::bad_login(name),
        };
        let form = String::from_utf8_lossy(&body);
        let Some(token) = form_value(&form, "token").filter(|t| valid_token(t)) else {
            return pages::bad_login(name);
        };
        match self.vmctld.redeem_login_token(token).await {
            Ok(Some(login)) => {
                let cookie = self.sessions.set_cookie(
                    &Session {
                        uid: login.uid,
                        user: login.user,
                    },
                    SystemTime::now(),
                );
                Response::builder()
                    .status(StatusCode::SEE_OTHER)
                    .header(header::LOCATION, "/")
                    .header(header::SET_COOKIE, cookie)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(pages::full(""))
                    .unwrap_or_else(|_| pages::bad_login(name))
            }
            Ok(None) => pages::bad_login(name),
            Err(e) => {
                tracing::warn!("redeeming a login token: {e}");
                pages::unavailable()
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        host: &str,
        backend: SocketAddr,
        session: Option<&Session>,
        route: &Route,
    ) -> Response<Body> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(
                Authority::try_from(backend.to_string()).expect("an address is an authority"),
            )
            .path_and_query(path)
            .build()
            .expect("the parts are valid");
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        rewrite_request_headers(req.headers_mut(), conn.peer.ip(), host, session, upgrade);

        let client = CLIENT.with(Client::clone);
        let mut resp = match client.request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::info!("{}: {backend}: {e}", route.name);
                let why = if e.is_connect() {
                    "connection failed"
                } else {
                    "no valid HTTP answer"
                };
                return pages::bad_gateway(&route.name, route.port, why);
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return pages::bad_gateway(&route.name, route.port, "an upgrade nobody asked for");
            };
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(client), Ok(backend)) = (client_upgrade.await, backend_upgrade.await)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            });
            let (mut parts, _) = resp.into_parts();
            strip_set_session_cookie(&mut parts.headers);
            return Response::from_parts(parts, pages::full(""));
        }
        let (mut parts, body) = resp.into_parts();
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
        strip_set_session_cookie(&mut parts.headers);
        Response::from_parts(parts, body.boxed())
    }
}

/// Largest login form body (a token is 64 hex digits).
const MAX_LOGIN_FORM: usize = 1024;

/// The value of `key` in a query string or form body (`a=1&key=v`), as
/// sent (tokens need no decoding).
fn form_value<'a>(form: &'a str, key: &str) -> Option<&'a str> {
    form.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A login token as vmctld makes them: hex digits, not too long.
fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 256 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a POST comes from the site itself: a browser says where a form
/// was sent from (`Origin`, `Sec-Fetch-Site`); a client that says neither
/// (curl, scripts) is no browser another site could steer.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin
            .to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("https://{host}")));
    }
    match headers.get("sec-fetch-site") {
        Some(site) => site == "same-origin",
        None => true,
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute form)
/// or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade:`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// What the VM receives: hop-by-hop headers, client-sent `X-VmCtl-*`,
/// `X-Forwarded-*` and `Forwarded` removed; the proxy's own set; the
/// session cookie taken out of `Cookie`.
fn rewrite_request_headers(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: &str,
    session: Option<&Session>,
    upgrade: bool,
) {
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("x-vmctl-") || k.starts_with("x-forwarded-") || k == "forwarded"
        })
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(session::without_session_cookie)
        .filter(|c| !c.is_empty())
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::try_from(cookies.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
    if let Ok(v) = HeaderValue::try_from(host) {
        headers.insert(header::HOST, v.clone());
        headers.insert("x-forwarded-host", v);
    }
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    headers.insert(
        "x-forwarded-for",
        HeaderValue::try_from(client.to_string()).expect("an address is a header value"),
    );
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Some(s) = session {
        if let Ok(user) = HeaderValue::try_from(s.user.as_str()) {
            headers.insert("x-vmctl-user", user);
            headers.insert("x-vmctl-uid", HeaderValue::from(s.uid));
        }
    }
}

/// A VM may not set (or overwrite) the proxy's session cookie for the
/// domain: that would log visitors in as someone else.
fn strip_set_session_cookie(headers: &mut HeaderMap) {
    let keep: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            !v.to_str()
                .unwrap_or("")
                .trim_start()
                .starts_with(&format!("{}=", session::COOKIE))
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in keep {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-vmctl-user", HeaderValue::from_static("root"));
        h.insert("X-VmCtl-Uid", HeaderValue::from_static("0"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; vmctl_session=v1.x; b=2"),
        );
        rewrite_request_headers(
            &mut h,
            "::ffff:10.0.0.9".parse().unwrap(),
            "blog.vm.test",
            None,
            false,
        );
        assert_eq!(h.get("x-vmctl-user"), None);
        assert_eq!(h.get("x-vmctl-uid"), None);
        assert_eq!(h.get("forwarded"), None);
        assert_eq!(h.get("x-secret"), None);
        assert_eq!(h.get("connection"), None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "blog.vm.test");
        assert_eq!(h["host"], "blog.vm.test");
        assert_eq!(h["cookie"], "a=1; b=2");

        let alice = Session {
            uid: 1000,
            user: "alice".into(),
        };
        let mut h = HeaderMap::new();
        h.insert("x-vmctl-user", HeaderValue::from_static("root"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        rewrite_request_headers(
            &mut h,
            "1.2.3.4".parse().unwrap(),
            "a.b",
            Some(&alice),
            true,
        );
        assert_eq!(h["x-vmctl-user"], "alice");
        assert_eq!(h["x-vmctl-uid"], "1000");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn login_forms_come_from_the_site_itself() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "web.vm.test"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, "web.vm.test"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h, "web.vm.test"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        assert!(!same_origin(&h, "web.vm.test"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, "web.vm.test"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://web.vm.test"),
        );
        assert!(same_origin(&h, "web.vm.test"));
        assert!(!same_origin(&h, "web.vm.test:8443"));

        assert_eq!(form_value("a=1&token=ab12", "token"), Some("ab12"));
        assert_eq!(form_value("xtoken=ab12", "token"), None);
        assert!(valid_token("00ff"));
        assert!(!valid_token("\"><script>"));
        assert!(!valid_token(""));
    }

    #[test]
    fn vm_cannot_set_the_session_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("vmctl_session=evil; Domain=vm.test"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("theme=dark"));
        strip_set_session_cookie(&mut h);
        let all: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(all, ["theme=dark"]);
    }
}
