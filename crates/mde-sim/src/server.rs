//! The HTTP side: the accept loop, the routes, and what every API call goes through.
//!
//! Every API call passes the same gate, in the service's order: the bearer token (401), the quota (429,
//! counted on arrival against the call's API's budget, or the app's: see [`super::quota`]), then faults (which still count against the quota), then the route's own checks.
//! Each route's logic is synchronous and holds each lock briefly; only added latency and dropping a
//! connection await.
//!
//! Connections are served by our own accept loop so that a handler can close its TCP connection without any
//! answer: it signals its connection's task, which drops the connection.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::actions::{Actions, CancelError};
use super::clock::{Clock, parse_rfc3339, random_guid, rfc3339};
use super::config::{Faults, RetryAfterOverride, SimConfig};
use super::device_code;
use super::faults::{Fault, FaultState};
use super::fleet::{Fleet, SimMachine};
use super::misanswers;
use super::query::{
    ACTION_FIELDS, Clause, Field, ListQuery, MACHINE_FIELDS, MAX_TOP, list_query, text_matches, time_matches,
};
use super::quota::Quotas;
use super::stats::{Counters, DROPPED, SimStats};
use super::token::{self, Grant, Tokens, Version};
use crate::error::Error;
use crate::rate::Rate;

/// Route templates, as `SimStats::calls` names them.
pub(crate) mod route {
    pub const TOKEN_V2: &str = "POST /{tenant}/oauth2/v2.0/token";
    pub const TOKEN_V1: &str = "POST /{tenant}/oauth2/token";
    pub const DEVICE_CODE: &str = "POST /{tenant}/oauth2/v2.0/devicecode";
    pub const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
    pub const MACHINE: &str = "GET /api/machines/{id}";
    pub const MACHINES: &str = "GET /api/machines";
    pub const ACTION: &str = "GET /api/machineactions/{id}";
    pub const ACTIONS: &str = "GET /api/machineactions";
    pub const CANCEL: &str = "POST /api/machineactions/{id}/cancel";
    pub const TAG: &str = "POST /api/machines/{id}/tags";
    pub const TAG_MANY: &str = "POST /api/machines/AddOrRemoveTagForMultipleMachines";
    pub const UNMATCHED: &str = "unmatched";
}

/// The budget (one per API) each route's calls count against when the quotas are kept per API.
pub(crate) mod budget {
    pub const OFFBOARD: &str = super::super::quota::BACKGROUND_API;
    pub const GET_MACHINE: &str = "get machine";
    pub const LIST_MACHINES: &str = "list machines";
    pub const GET_ACTION: &str = "get action";
    pub const LIST_ACTIONS: &str = "list actions";
    pub const CANCEL: &str = "cancel action";
    /// One machine's tags and many machines' tags: one budget.
    pub const TAGS: &str = "tags";
}

/// The simulator's state, shared by every connection.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) clock: Clock,
    pub(crate) tokens: Tokens,
    /// Device codes handed out and refresh tokens issued.
    pub(crate) device: device_code::Flows,
    pub(crate) counters: Mutex<Counters>,
    fleet: Fleet,
    quotas: Mutex<Quotas>,
    faults: Mutex<FaultState>,
    actions: Mutex<Actions>,
    /// The tags of machines whose tags were changed, by machine id: they replace the fleet's.
    tags: Mutex<HashMap<String, Vec<String>>>,
    /// Machines that reported since the simulator started ([`Simulator::machine_reports`]): when, in
    /// service time. Their `lastSeen` is that, and they are `Active`.
    reports: Mutex<HashMap<String, SystemTime>>,
    forbidden_groups: HashSet<String>,
    forbidden_ids: HashSet<String>,
    base_url: String,
    /// The server's connections, every tenant's alike.
    connections: Arc<Connections>,
}

/// The TCP connections the server accepted, and how many are open; and the API reads being answered.
#[derive(Debug, Default)]
struct Connections {
    accepted: AtomicU64,
    open: AtomicU64,
    most_open: AtomicU64,
    reads: AtomicU64,
    most_reads: AtomicU64,
}

impl Connections {
    /// One more open, until the guard is dropped.
    fn opened(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_open.fetch_max(open, Ordering::Relaxed);
        OpenConnection(self.clone())
    }
}

struct OpenConnection(Arc<Connections>);

/// One API read (a GET) being answered, until dropped: its latency included, every tenant's alike.
struct Reading<'a>(&'a Connections);

impl<'a> Reading<'a> {
    fn start(connections: &'a Connections) -> Self {
        let reads = connections.reads.fetch_add(1, Ordering::Relaxed) + 1;
        connections.most_reads.fetch_max(reads, Ordering::Relaxed);
        Reading(connections)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.reads.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tenants the simulator serves, each its own [`Shared`] (fleet, app, tokens, quotas, actions, faults),
/// behind one address as Entra ID and the API are. A request goes to the tenant its path names (sign-in,
/// by id or domain) or its bearer token was issued by (`tid`, the API); one that names no tenant served goes
/// to the first, which refuses it as the service would (AADSTS90002, 401).
struct Tenants {
    list: Vec<Arc<Shared>>,
    /// Tenant ids and domains, lowercase, to their index in `list`.
    by_name: HashMap<String, usize>,
}

impl Tenants {
    fn first(&self) -> &Arc<Shared> {
        &self.list[0]
    }

    fn find(&self, name: &str) -> Option<&Arc<Shared>> {
        self.by_name.get(&name.trim().to_ascii_lowercase()).map(|&i| &self.list[i])
    }

    /// The tenant a request is for. With one tenant, that one without a look at the request.
    fn route<B>(&self, request: &Request<B>) -> &Arc<Shared> {
        if self.list.len() == 1 {
            return self.first();
        }
        let path = request.uri().path();
        let name = if path.starts_with("/api/") {
            token::tenant_of(request.headers())
        } else if path == "/sim/stats" {
            let query = request.uri().query().unwrap_or_default();
            super::query::decode_pairs(query).into_iter().find(|(k, _)| k == "tenant").map(|(_, v)| v)
        } else {
            path.trim_start_matches('/').split('/').next().map(str::to_string)
        };
        name.and_then(|name| self.find(&name)).unwrap_or(self.first())
    }
}

/// A running simulator. Dropping it stops it too; [`Simulator::shutdown`] also waits for the stop.
pub struct Simulator {
    addr: SocketAddr,
    tenants: Arc<Tenants>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Binds `config.listen` and serves one tenant in a spawned task.
    pub async fn start(config: SimConfig) -> Result<Simulator, Error> {
        Simulator::start_tenants(vec![config]).await
    }

    /// Serves several tenants behind one address, each as its own config says (its fleet, app
    /// registration, roles, quotas, faults). The first config's `listen` and `time_scale` hold for all;
    /// tenant ids and domains must differ.
    pub async fn start_tenants(configs: Vec<SimConfig>) -> Result<Simulator, Error> {
        let Some(first) = configs.first() else {
            return Err(Error::Simulator("the simulator needs at least one tenant".into()));
        };
        let (listen, time_scale) = (first.listen, first.time_scale);
        let mut by_name = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            config.validate()?;
            for name in std::iter::once(&config.tenant_id).chain(&config.tenant_domains) {
                if by_name.insert(name.trim().to_ascii_lowercase(), i).is_some() {
                    return Err(Error::Simulator(format!("tenant `{name}` is named twice")));
                }
            }
        }
        let listener =
            TcpListener::bind(listen).await.map_err(|e| Error::Simulator(format!("cannot listen on {listen}: {e}")))?;
        let addr =
            listener.local_addr().map_err(|e| Error::Simulator(format!("cannot read the listening address: {e}")))?;
        let clock = Clock::new(time_scale);
        let base_url = format!("http://{addr}");
        let connections = Arc::new(Connections::default());
        let list: Vec<Arc<Shared>> = configs
            .into_iter()
            .map(|config| Arc::new(Shared::new(config, clock, base_url.clone(), connections.clone())))
            .collect();
        let tenants = Arc::new(Tenants { list, by_name });
        let shared = tenants.first().clone();
        let (stop, stopped) = watch::channel(false);
        for tenant in &tenants.list {
            if let Some(rate) = tenant.config.background_rate {
                tokio::spawn(background_client(tenant.clone(), rate, stopped.clone()));
            }
        }
        let task = tokio::spawn(accept_loop(listener, tenants.clone(), stopped));
        Ok(Simulator { addr, tenants, shared, stop, task })
    }

    /// The stats of the tenant named `tenant` (its id or a domain), as `GET /sim/stats?tenant=` gives them.
    pub fn tenant_stats(&self, tenant: &str) -> Option<SimStats> {
        self.tenants.find(tenant).map(|t| t.stats())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Shared {
    fn new(mut config: SimConfig, clock: Clock, base_url: String, connections: Arc<Connections>) -> Shared {
        let fleet = std::mem::take(&mut config.fleet);
        Shared {
            clock,
            tokens: Tokens::default(),
            device: device_code::Flows::default(),
            counters: Mutex::new(Counters::default()),
            quotas: Mutex::new(Quotas::new(&config.quotas, config.quota_scope, move |d| clock.real(d))),
            faults: Mutex::new(FaultState::new(config.faults.clone())),
            actions: Mutex::new(
                Actions::new(config.faults.seed, config.lifecycle.clone(), clock)
                    .legacy_type(config.legacy_action_type),
            ),
            tags: Mutex::default(),
            reports: Mutex::default(),
            forbidden_groups: config.forbidden_groups.iter().map(|g| g.to_lowercase()).collect(),
            forbidden_ids: config.forbidden_ids.iter().map(|i| i.trim().to_ascii_lowercase()).collect(),
            base_url,
            connections,
            fleet,
            config,
        }
    }
}

impl Simulator {
    /// `http://127.0.0.1:PORT`: both the sign-in authority and the API base.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The same data as `GET /sim/stats`: the first tenant's.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Replaces the faults from the next call on. Per-call counts (see [`Faults`]) start when faults are first
    /// on and carry on across changes.
    pub fn set_faults(&self, faults: Faults) {
        if let Err(e) = faults.validate() {
            tracing::warn!("{e}; shares are drawn in order until they reach 1");
        }
        self.shared.faults.lock().expect("faults lock").set(faults);
    }

    /// The machine `id` reports now, as a device (re-)onboarded does: its `lastSeen` becomes the service's
    /// now and it is `Active`, also after an offboard that succeeded. False for an unknown machine.
    pub fn machine_reports(&self, id: &str) -> bool {
        let Some(machine) = self.shared.fleet.get(id) else { return false };
        let now = self.shared.clock.service_time(Instant::now());
        self.shared.reports.lock().expect("reports lock").insert(machine.id.clone(), now);
        true
    }

    /// Revokes every token issued so far (as a key rollover or an admin would): calls made with them are
    /// answered 401, and new tokens are issued as usual.
    pub fn revoke_tokens(&self) {
        self.shared.tokens.revoke_all();
    }

    /// Revokes every refresh token issued so far (a password reset, an admin's "revoke sessions"):
    /// redeeming one is answered `invalid_grant`; access tokens already issued live on.
    pub fn revoke_refresh_tokens(&self) {
        self.shared.device.revoke_refresh_tokens();
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Another client of the same app: `rate.limit` calls every `rate.period` (service time), evenly spaced,
/// until the simulator stops. A tick missed under load is made up at once, so the rate holds.
async fn background_client(shared: Arc<Shared>, rate: Rate, mut stopped: watch::Receiver<bool>) {
    let every = (shared.clock.real(rate.period) / rate.limit.max(1)).max(Duration::from_micros(100));
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticks.tick() => shared.quotas.lock().expect("quota lock").background(Instant::now()),
        }
    }
}

/// A handle a handler uses to have its connection closed without an answer.
#[derive(Clone, Default)]
struct ConnectionKill(Arc<Notify>);

async fn accept_loop(listener: TcpListener, tenants: Arc<Tenants>, mut stopped: watch::Receiver<bool>) {
    let router = router();
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("simulator accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        let tenants = tenants.clone();
        let open = tenants.first().connections.opened();
        tokio::spawn(async move {
            let _open = open;
            let kill = ConnectionKill::default();
            let handle = kill.clone();
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let shared = tenants.route(&request).clone();
                if request.uri().path() != "/sim/stats" {
                    shared.counters.lock().expect("counters lock").requests += 1;
                }
                request.extensions_mut().insert(shared);
                request.extensions_mut().insert(handle.clone());
                hyper::service::Service::call(&service, request)
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                biased;
                // Dropping the connection closes the socket with nothing written.
                _ = kill.0.notified() => {}
                _ = stopped.changed() => {}
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!("simulator connection: {e}");
                    }
                }
            }
        });
    }
}

/// The routes; each handler finds its tenant's [`Shared`] in the request (put there by the accept loop).
fn router() -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code_start))
        .route("/sim/stats", get(stats))
        .route("/api/machines", get(list_machines))
        .route("/api/machines/{id}", get(get_machine))
        .route("/api/machines/{id}/offboard", post(offboard))
        .route("/api/machines/{id}/tags", post(tag_machine))
        .route("/api/machines/AddOrRemoveTagForMultipleMachines", post(tag_machines))
        .route("/api/machineactions", get(list_actions))
        .route("/api/machineactions/{id}", get(get_action))
        .route("/api/machineactions/{id}/cancel", post(cancel_action))
        .fallback(unmatched)
}

type Sim = Extension<Arc<Shared>>;
type Kill = Extension<ConnectionKill>;

async fn token_v2(Extension(sim): Sim, Path(tenant): Path<String>, body: Bytes) -> Response {
    let answer = match &sim.config.misanswers.token {
        Some(misanswer) => misanswers::response(misanswer),
        None => token::issue(&sim, Version::V2, &tenant, &body),
    };
    sim.count(route::TOKEN_V2, answer.status().as_u16());
    answer
}

async fn token_v1(Extension(sim): Sim, Path(tenant): Path<String>, body: Bytes) -> Response {
    let answer = match &sim.config.misanswers.token {
        Some(misanswer) => misanswers::response(misanswer),
        None => token::issue(&sim, Version::V1, &tenant, &body),
    };
    sim.count(route::TOKEN_V1, answer.status().as_u16());
    answer
}

async fn device_code_start(Extension(sim): Sim, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form = super::query::decode_pairs(&String::from_utf8_lossy(&body)).into_iter().collect();
    let answer = match device_code::start(&sim, &tenant, &form) {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(refusal) => refusal.into_response(),
    };
    sim.count(route::DEVICE_CODE, answer.status().as_u16());
    answer
}

async fn stats(Extension(sim): Sim, uri: Uri) -> Response {
    // `per_machine=no`: without the offboard calls per machine (an entry per machine called), for a client
    // that must keep its own memory small (the benchmarks' harness, whose RSS its measured children inherit).
    let pairs = super::query::decode_pairs(uri.query().unwrap_or_default());
    let per_machine = !pairs.iter().any(|(k, v)| k == "per_machine" && v == "no");
    axum::Json(sim.stats_of(per_machine)).into_response()
}

async fn unmatched(Extension(sim): Sim, uri: Uri) -> Response {
    sim.count(route::UNMATCHED, 404);
    if sim.faults.lock().expect("faults lock").faults().html_not_found {
        let page =
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n";
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    }
    api_error(StatusCode::NOT_FOUND, "NotFound", &format!("No route matches {}", uri.path()))
}

async fn offboard(
    Extension(sim): Sim,
    Extension(kill): Kill,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let outcome = sim.offboard(&id, &headers, &uri, &body);
    sim.finish(route::OFFBOARD, outcome, kill).await
}

async fn get_machine(
    Extension(sim): Sim,
    Extension(kill): Kill,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let outcome = sim.machine(&id, &headers, &uri);
    sim.finish(route::MACHINE, outcome, kill).await
}

async fn list_machines(Extension(sim): Sim, Extension(kill): Kill, headers: HeaderMap, uri: Uri) -> Response {
    let outcome = sim.machines(&headers, &uri);
    sim.finish(route::MACHINES, outcome, kill).await
}

async fn get_action(
    Extension(sim): Sim,
    Extension(kill): Kill,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let outcome = sim.action(&id, &headers, &uri);
    sim.finish(route::ACTION, outcome, kill).await
}

async fn cancel_action(
    Extension(sim): Sim,
    Extension(kill): Kill,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let outcome = sim.cancel(&id, &headers, &uri, &body);
    sim.finish(route::CANCEL, outcome, kill).await
}

async fn tag_machine(
    Extension(sim): Sim,
    Extension(kill): Kill,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let outcome = sim.tag(Some(&id), &headers, &uri, &body);
    sim.finish(route::TAG, outcome, kill).await
}

async fn tag_machines(
    Extension(sim): Sim,
    Extension(kill): Kill,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let outcome = sim.tag(None, &headers, &uri, &body);
    sim.finish(route::TAG_MANY, outcome, kill).await
}

async fn list_actions(Extension(sim): Sim, Extension(kill): Kill, headers: HeaderMap, uri: Uri) -> Response {
    let outcome = sim.actions(&headers, &uri);
    sim.finish(route::ACTIONS, outcome, kill).await
}

/// What an API call ends with.
enum Outcome {
    Answer(Response),
    /// Close the connection without an answer.
    Drop,
}

/// A call that passed the gate.
struct Admitted {
    grant: Grant,
    /// A fault the route applies itself: a transient 404, or a drop after applying an offboard.
    fault: Option<Fault>,
}

/// An API error answer: `{"error": {"code", "message", "target"}}`.
fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "target": random_guid()}});
    (status, axum::Json(body)).into_response()
}

fn answer(status: StatusCode, code: &str, message: &str) -> Outcome {
    Outcome::Answer(api_error(status, code, message))
}

fn json_answer(status: StatusCode, body: &impl Serialize) -> Outcome {
    match serde_json::to_vec(body) {
        Ok(bytes) => Outcome::Answer(
            (
                status,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; odata.metadata=minimal"))],
                Body::from(bytes),
            )
                .into_response(),
        ),
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e.to_string()),
    }
}

/// One entity with its OData context.
#[derive(Serialize)]
struct Entity<'a, T: Serialize> {
    #[serde(rename = "@odata.context")]
    context: &'a str,
    #[serde(flatten)]
    value: T,
}

/// A page of a collection.
#[derive(Serialize)]
struct Page<'a, T: Serialize> {
    #[serde(rename = "@odata.context")]
    context: &'a str,
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

impl Shared {
    fn count(&self, route: &'static str, status: u16) {
        self.counters.lock().expect("counters lock").call(route, status);
    }

    fn stats(&self) -> SimStats {
        self.stats_of(true)
    }

    /// [`Shared::stats`], with the offboard calls per machine or without them (see `GET /sim/stats`).
    fn stats_of(&self, per_machine: bool) -> SimStats {
        let now = Instant::now();
        let mut stats = self.counters.lock().expect("counters lock").snapshot(per_machine);
        {
            let quotas = self.quotas.lock().expect("quota lock");
            stats.max_in_window = quotas.stats();
            stats.max_in_window_by_budget = quotas.stats_by_budget();
            stats.quota_scope = quotas.scope().as_str().to_string();
            (stats.background_served, stats.background_refused) = (quotas.background_served, quotas.background_refused);
        }
        let actions = self.actions.lock().expect("actions lock");
        stats.actions_by_status = actions.count_by_status(now).into_iter().map(|(s, n)| (s.to_string(), n)).collect();
        stats.time_scale = self.config.time_scale;
        stats.connections = self.connections.accepted.load(Ordering::Relaxed);
        stats.most_connections_open = self.connections.most_open.load(Ordering::Relaxed);
        stats.most_reads_at_once = self.connections.most_reads.load(Ordering::Relaxed);
        stats
    }

    /// Adds the latency fault, records the answer, and answers or drops the connection.
    async fn finish(&self, route: &'static str, outcome: Outcome, kill: ConnectionKill) -> Response {
        let _reading = route.starts_with("GET /api/").then(|| Reading::start(&self.connections));
        let (latency, slow) = self.faults.lock().expect("faults lock").next_latency(route.starts_with("POST /api/"));
        if slow {
            self.counters.lock().expect("counters lock").faults.slow += 1;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match outcome {
            Outcome::Answer(response) => {
                self.count(route, response.status().as_u16());
                response
            }
            Outcome::Drop => {
                {
                    let mut counters = self.counters.lock().expect("counters lock");
                    counters.call(route, DROPPED);
                    counters.faults.dropped += 1;
                }
                kill.0.notify_one();
                // The connection task drops this handler together with the connection.
                std::future::pending().await
            }
        }
    }

    /// Token, quota and faults: the gate of every API call. `offboard` lets a drop come after the action.
    // An `Outcome` moves once per call; boxing it would allocate on every answer.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        api: &'static str,
        headers: &HeaderMap,
        method: &str,
        uri: &Uri,
        offboard: bool,
    ) -> Result<Admitted, Outcome> {
        let now = Instant::now();
        let grant =
            self.tokens.check(headers, now).map_err(|why| answer(StatusCode::UNAUTHORIZED, "Unauthorized", why))?;
        if self.config.refuse_tokens {
            let why = "The token is not valid for this API (simulated: every token is refused).";
            return Err(answer(StatusCode::UNAUTHORIZED, "Unauthorized", why));
        }
        let spent_for = self.config.quota_spent_for.saturating_sub(self.clock.real_elapsed(now));
        if !spent_for.is_zero() {
            self.counters.lock().expect("counters lock").quota_rejections += 1;
            return Err(self.too_many_requests(spent_for, "Rate limit is exceeded. Try again later."));
        }
        let quota = self.quotas.lock().expect("quota lock").admit(api, now);
        if let Err(wait) = quota {
            self.counters.lock().expect("counters lock").quota_rejections += 1;
            return Err(self.too_many_requests(wait, "Rate limit is exceeded. Try again later."));
        }
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let fault = self.faults.lock().expect("faults lock").draw(method, target);
        let counters = || self.counters.lock().expect("counters lock");
        match fault {
            Some(Fault::Error500) => {
                counters().faults.error_500 += 1;
                Err(answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "An internal error occurred (simulated).",
                ))
            }
            Some(Fault::Error503) => {
                counters().faults.error_503 += 1;
                Err(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable (simulated).",
                ))
            }
            Some(Fault::Spurious429(wait)) => {
                counters().faults.spurious_429 += 1;
                Err(self.too_many_requests(wait, "Rate limit is exceeded. Try again later."))
            }
            Some(Fault::Scripted(429)) => {
                let wait = self.faults.lock().expect("faults lock").faults().spurious_429_retry_after;
                Err(self.too_many_requests(wait, "Rate limit is exceeded. Try again later (scripted)."))
            }
            Some(Fault::Scripted(status)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let code: String = status.canonical_reason().unwrap_or("Error").split_whitespace().collect();
                Err(answer(status, &code, "Scripted answer (simulated)."))
            }
            Some(Fault::Drop { after_apply }) if !(offboard && after_apply) => Err(Outcome::Drop),
            fault => Ok(Admitted { grant, fault }),
        }
    }

    /// A 429 whose `Retry-After` says `wait` in whole seconds (rounded up, at least one) or as an HTTP-date,
    /// unless `retry_after_override` says otherwise.
    fn too_many_requests(&self, wait: Duration, message: &str) -> Outcome {
        if let Some(retry_after) = &self.config.retry_after_override {
            let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
            if let RetryAfterOverride::Text(text) = retry_after
                && let Ok(value) = HeaderValue::from_str(text)
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Outcome::Answer(response);
        }
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let value = if self.config.retry_after_http_date {
            // An HTTP-date has whole seconds: round the moment up so that it is never too early.
            let at = SystemTime::now() + wait;
            let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            let at =
                SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs() + u64::from(since.subsec_nanos() > 0));
            httpdate::fmt_http_date(at)
        } else {
            seconds.to_string()
        };
        let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_str(&value).expect("retry-after is ASCII"));
        Outcome::Answer(response)
    }

    fn offboard(&self, id: &str, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Outcome {
        let key = id.trim().to_ascii_lowercase();
        self.counters.lock().expect("counters lock").offboard(&key).calls += 1;
        let misanswer = self.config.misanswers.offboard.as_ref();
        if let Some(misanswer) = misanswer.filter(|m| m.replaces_the_call()) {
            return Outcome::Answer(misanswers::response(misanswer));
        }
        let admitted = match self.admit(budget::OFFBOARD, headers, "POST", uri, true) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        let outcome = self.offboard_admitted(id, &key, &admitted, body);
        // A drop drawn for after the action closes the connection whatever the call's own answer.
        if matches!(admitted.fault, Some(Fault::Drop { .. })) {
            return Outcome::Drop;
        }
        match (outcome, misanswer) {
            // The action was created; the answer does not show it.
            (Outcome::Answer(created), Some(misanswer)) if created.status().is_success() => {
                Outcome::Answer(misanswers::response(misanswer))
            }
            (outcome, _) => outcome,
        }
    }

    fn offboard_admitted(&self, id: &str, key: &str, admitted: &Admitted, body: &[u8]) -> Outcome {
        if !admitted.grant.can_offboard {
            return answer(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The application does not have the Machine.Offboard permission.",
            );
        }
        let comment = match read_comment(body) {
            Ok(comment) => comment,
            Err(why) => return answer(StatusCode::BAD_REQUEST, "InvalidRequestBody", why),
        };
        let Some(machine) = self.fleet.get(key) else {
            return answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine {id} was not found."));
        };
        if admitted.fault == Some(Fault::NotFound) {
            self.counters.lock().expect("counters lock").faults.transient_404 += 1;
            return answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine {id} was not found."));
        }
        if self.forbidden_ids.contains(&machine.id)
            || self.forbidden_groups.contains(&machine.rbac_group_name.to_lowercase())
        {
            return answer(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "The application has no access to machine {} in device group '{}'.",
                    machine.id, machine.rbac_group_name
                ),
            );
        }
        if self.config.refuses_platform(&machine.os_platform, machine.version.as_deref()) {
            let version = machine.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
            return answer(
                StatusCode::BAD_REQUEST,
                "OsPlatformNotSupported",
                &format!("Offboarding is not supported on OS platform {}{version}.", machine.os_platform),
            );
        }
        let now = Instant::now();
        let created = {
            let mut actions = self.actions.lock().expect("actions lock");
            if actions.open_for(&machine.id, now).is_some() {
                return answer(StatusCode::BAD_REQUEST, "ActiveRequestAlreadyExists", "Action is already in progress");
            }
            let context = format!("{}/api/$metadata#MachineActions/$entity", self.base_url);
            serde_json::to_vec(&Entity {
                context: &context,
                value: actions.create_view(machine, admitted.grant.requestor(&self.config.client_id), &comment, now),
            })
        };
        {
            let mut counters = self.counters.lock().expect("counters lock");
            counters.action_created(self.clock.real_elapsed(now));
            counters.offboard(key).accepted += 1;
        }
        match created {
            Ok(bytes) => Outcome::Answer(
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; odata.metadata=minimal"))],
                    Body::from(bytes),
                )
                    .into_response(),
            ),
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e.to_string()),
        }
    }

    /// Admits a read call: the gate, then the read permission.
    #[allow(clippy::result_large_err)]
    fn admit_read(&self, api: &'static str, headers: &HeaderMap, uri: &Uri) -> Result<Admitted, Outcome> {
        let admitted = self.admit(api, headers, "GET", uri, false)?;
        if !admitted.grant.can_read {
            return Err(answer(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The application needs the Machine.Read.All or Machine.ReadWrite.All permission.",
            ));
        }
        Ok(admitted)
    }

    fn machine(&self, id: &str, headers: &HeaderMap, uri: &Uri) -> Outcome {
        let admitted = match self.admit_read(budget::GET_MACHINE, headers, uri) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        // A name shared by several machines (reimaged devices) finds the one seen last.
        let found = self.fleet.get(id).or_else(|| self.fleet.by_name(id).max_by(|a, b| a.last_seen.cmp(&b.last_seen)));
        let not_found = || answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine {id} was not found."));
        match found {
            None => not_found(),
            Some(_) if admitted.fault == Some(Fault::NotFound) => {
                self.counters.lock().expect("counters lock").faults.transient_404 += 1;
                not_found()
            }
            Some(machine) => {
                let context = format!("{}/api/$metadata#Machines/$entity", self.base_url);
                let state = self.state();
                json_answer(StatusCode::OK, &Entity { context: &context, value: state.current(machine) })
            }
        }
    }

    fn machines(&self, headers: &HeaderMap, uri: &Uri) -> Outcome {
        if let Some(misanswer) = &self.config.misanswers.lists {
            return Outcome::Answer(misanswers::response(misanswer));
        }
        if let Err(outcome) = self.admit_read(budget::LIST_MACHINES, headers, uri) {
            return outcome;
        }
        let q = match list_query(uri.query(), MACHINE_FIELDS) {
            Ok(q) => q.served(self.faults.lock().expect("faults lock").faults()),
            Err((code, why)) => return answer(StatusCode::BAD_REQUEST, code, &why),
        };
        // An id or name clause narrows the search through the indexes; the rest is a scan in fleet order.
        let narrowed: Option<Vec<&SimMachine>> =
            q.filter.required().into_iter().find_map(|c| match (&c.field, &c.value) {
                (Field::Id, super::query::Value::Text(id)) => Some(self.fleet.get(id).into_iter().collect()),
                (Field::ComputerDnsName, super::query::Value::Text(name)) => Some(self.fleet.by_name(name).collect()),
                _ => None,
            });
        let candidates: Box<dyn Iterator<Item = &SimMachine>> = match narrowed {
            Some(list) => Box::new(list.into_iter()),
            None => Box::new(self.fleet.machines().iter()),
        };
        let page_size = q.top.unwrap_or(MAX_TOP);
        let state = self.state();
        let mut value: Vec<Cow<'_, SimMachine>> = candidates
            .map(|m| state.current(m))
            .filter(|m| q.filter.matches(&|c| machine_matches(m, c)))
            .skip(q.skip)
            .take(page_size + 1)
            .collect();
        let next_link = (value.len() > page_size && q.top.is_none())
            .then(|| next_link(&self.base_url, "/api/machines", uri, &q, page_size));
        value.truncate(page_size);
        let context = format!("{}/api/$metadata#Machines", self.base_url);
        json_answer(StatusCode::OK, &Page { context: &context, value, next_link })
    }

    fn action(&self, id: &str, headers: &HeaderMap, uri: &Uri) -> Outcome {
        if let Err(outcome) = self.admit_read(budget::GET_ACTION, headers, uri) {
            return outcome;
        }
        let now = Instant::now();
        let actions = self.actions.lock().expect("actions lock");
        match actions.get(id) {
            None => answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine action {id} was not found.")),
            Some(action) => {
                let context = format!("{}/api/$metadata#MachineActions/$entity", self.base_url);
                json_answer(StatusCode::OK, &Entity { context: &context, value: actions.view(action, now) })
            }
        }
    }

    /// Cancels an open action: the permission of its type (`Machine.Offboard` for an offboard), a body with
    /// a `Comment`; 404 for an unknown action, 400 for a final one.
    fn cancel(&self, id: &str, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Outcome {
        let admitted = match self.admit(budget::CANCEL, headers, "POST", uri, false) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        if !admitted.grant.can_offboard {
            let why = "Cancelling an offboard action needs the Machine.Offboard permission.";
            return answer(StatusCode::FORBIDDEN, "Forbidden", why);
        }
        let comment = match read_comment(body) {
            Ok(comment) => comment,
            Err(why) => return answer(StatusCode::BAD_REQUEST, "InvalidRequestBody", why),
        };
        let now = Instant::now();
        let mut actions = self.actions.lock().expect("actions lock");
        match actions.cancel(id, admitted.grant.requestor(&self.config.client_id), &comment, now) {
            Err(CancelError::NotFound) => {
                answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine action {id} was not found."))
            }
            Err(CancelError::Final(status)) => answer(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("Machine action {id} is {status}: only a Pending or InProgress action can be cancelled."),
            ),
            Ok(index) => {
                let context = format!("{}/api/$metadata#MachineActions/$entity", self.base_url);
                json_answer(StatusCode::OK, &Entity { context: &context, value: actions.view_at(index, now) })
            }
        }
    }

    /// Adds a tag to machines or removes it: one machine (`id`), or many (`MachineIds` in the body, at most
    /// [`TAG_MACHINES_MAX`]). Needs `Machine.ReadWrite.All`; the body's `Value` and `Action` (`Add` or
    /// `Remove`, names case-sensitive). Answers the machines as they are now: one entity, or a collection.
    fn tag(&self, id: Option<&str>, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Outcome {
        let admitted = match self.admit(budget::TAGS, headers, "POST", uri, false) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        if !admitted.grant.can_write {
            let why = "Changing machine tags needs the Machine.ReadWrite.All permission.";
            return answer(StatusCode::FORBIDDEN, "Forbidden", why);
        }
        let request = match read_tag_request(body, id.is_none()) {
            Ok(request) => request,
            Err(why) => return answer(StatusCode::BAD_REQUEST, "InvalidRequestBody", &why),
        };
        let ids = match id {
            Some(id) => vec![id.to_string()],
            None => request.machine_ids,
        };
        let mut machines = Vec::with_capacity(ids.len());
        for id in &ids {
            match self.fleet.get(id) {
                Some(machine) => machines.push(machine),
                None => {
                    return answer(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("Machine {id} was not found."));
                }
            }
        }
        let mut tags = self.tags.lock().expect("tags lock");
        for machine in &machines {
            let list = tags.entry(machine.id.clone()).or_insert_with(|| machine.machine_tags.clone());
            list.retain(|t| t != &request.value);
            if request.add {
                list.push(request.value.clone());
            }
        }
        let value: Vec<Cow<'_, SimMachine>> = machines.into_iter().map(|m| tagged(m, &tags)).collect();
        match id {
            Some(_) => {
                let context = format!("{}/api/$metadata#Machines/$entity", self.base_url);
                json_answer(StatusCode::OK, &Entity { context: &context, value: &value[0] })
            }
            None => {
                let context = format!("{}/api/$metadata#Machines", self.base_url);
                json_answer(StatusCode::OK, &Page { context: &context, value, next_link: None })
            }
        }
    }

    fn actions(&self, headers: &HeaderMap, uri: &Uri) -> Outcome {
        if let Some(misanswer) = &self.config.misanswers.lists {
            return Outcome::Answer(misanswers::response(misanswer));
        }
        if let Err(outcome) = self.admit_read(budget::LIST_ACTIONS, headers, uri) {
            return outcome;
        }
        let q = match list_query(uri.query(), ACTION_FIELDS) {
            Ok(q) => q.served(self.faults.lock().expect("faults lock").faults()),
            Err((code, why)) => return answer(StatusCode::BAD_REQUEST, code, &why),
        };
        let now = Instant::now();
        let actions = self.actions.lock().expect("actions lock");
        let page_size = q.top.unwrap_or(MAX_TOP);
        let mut value = actions.list(&q, now, page_size + 1);
        let next_link = (value.len() > page_size && q.top.is_none())
            .then(|| next_link(&self.base_url, "/api/machineactions", uri, &q, page_size));
        value.truncate(page_size);
        let context = format!("{}/api/$metadata#MachineActions", self.base_url);
        json_answer(StatusCode::OK, &Page { context: &context, value, next_link })
    }
}

/// The next page's URL: the same filter, `$skip` moved on by a page.
fn next_link(base: &str, path: &str, uri: &Uri, q: &ListQuery, page_size: usize) -> String {
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("$skip") && !p.starts_with("%24skip"))
        .collect();
    let mut link = format!("{base}{path}?");
    for p in kept {
        link.push_str(p);
        link.push('&');
    }
    link.push_str(&format!("$skip={}", q.skip + page_size));
    link
}

fn machine_matches(m: &SimMachine, c: &Clause) -> bool {
    match c.field {
        Field::Id => text_matches(&c.value, &m.id),
        Field::ComputerDnsName => text_matches(&c.value, &m.computer_dns_name),
        Field::HealthStatus => text_matches(&c.value, &m.health_status),
        Field::OsPlatform => text_matches(&c.value, &m.os_platform),
        Field::OnboardingStatus => text_matches(&c.value, &m.onboarding_status),
        Field::RbacGroupName => text_matches(&c.value, &m.rbac_group_name),
        Field::AadDeviceId => m.aad_device_id.as_deref().is_some_and(|a| text_matches(&c.value, a)),
        Field::LastSeen => parse_rfc3339(&m.last_seen).is_some_and(|t| time_matches(c.op, &c.value, t)),
        _ => false,
    }
}

/// Machines one tag call may name (Microsoft's documentation).
pub const TAG_MACHINES_MAX: usize = 500;

/// How long after its offboarding succeeded a machine that has not reported since turns `Inactive`
/// (Microsoft's documentation: "Inactive after 7 days"), in service time.
pub const INACTIVE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// What changed machines since the fleet was made, held for one answer (locks taken in this order:
/// tags, reports, actions).
struct MachineState<'a> {
    tags: std::sync::MutexGuard<'a, HashMap<String, Vec<String>>>,
    reports: std::sync::MutexGuard<'a, HashMap<String, SystemTime>>,
    actions: std::sync::MutexGuard<'a, Actions>,
    now: Instant,
    service_now: SystemTime,
}

impl Shared {
    fn state(&self) -> MachineState<'_> {
        let tags = self.tags.lock().expect("tags lock");
        let reports = self.reports.lock().expect("reports lock");
        let actions = self.actions.lock().expect("actions lock");
        let now = Instant::now();
        MachineState { tags, reports, actions, now, service_now: self.clock.service_time(now) }
    }
}

impl MachineState<'_> {
    /// `machine` as the API shows it now: its tags as changed; `lastSeen` and `Active` from its latest
    /// report, if it reported since the fleet was made; and, once an offboard succeeded and it has not
    /// reported since, it stops reporting (`lastSeen` stays) and turns `Inactive` [`INACTIVE_AFTER`] later.
    fn current<'a>(&self, machine: &'a SimMachine) -> Cow<'a, SimMachine> {
        let mut shown = tagged(machine, &self.tags);
        let reported = self.reports.get(&machine.id).copied();
        if let Some(at) = reported {
            let m = shown.to_mut();
            m.last_seen = rfc3339(at);
            m.health_status = "Active".into();
        }
        if let Some(done) = self.actions.succeeded_at(&machine.id, self.now)
            && reported.is_none_or(|at| at < done)
            && self.service_now.duration_since(done).is_ok_and(|since| since >= INACTIVE_AFTER)
            && shown.health_status != "Inactive"
        {
            shown.to_mut().health_status = "Inactive".into();
        }
        shown
    }
}

/// `machine` with its tags as changed, if they were.
fn tagged<'a>(machine: &'a SimMachine, tags: &HashMap<String, Vec<String>>) -> Cow<'a, SimMachine> {
    match tags.get(&machine.id) {
        Some(list) => Cow::Owned(SimMachine { machine_tags: list.clone(), ..machine.clone() }),
        None => Cow::Borrowed(machine),
    }
}

/// A tag call's body.
struct TagRequest {
    value: String,
    add: bool,
    machine_ids: Vec<String>,
}

/// Reads a tag call's body: `Value` (a non-empty string), `Action` (`Add` or `Remove`) and, for many machines,
/// `MachineIds` (1 to [`TAG_MACHINES_MAX`] strings).
fn read_tag_request(body: &[u8], many: bool) -> Result<TagRequest, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "The request body is not valid JSON.")?;
    let tag = match value.get("Value") {
        Some(serde_json::Value::String(tag)) if !tag.trim().is_empty() => tag.clone(),
        _ => return Err("The request body must contain 'Value', a non-empty string (names are case-sensitive).".into()),
    };
    let add = match value.get("Action").and_then(|a| a.as_str()) {
        Some("Add") => true,
        Some("Remove") => false,
        _ => return Err("'Action' must be 'Add' or 'Remove'.".into()),
    };
    let machine_ids = if many {
        let ids: Vec<String> = match value.get("MachineIds").and_then(|ids| ids.as_array()) {
            Some(ids) => ids.iter().filter_map(|id| id.as_str().map(str::to_string)).collect(),
            None => return Err("The request body must contain 'MachineIds', a list of machine ids.".into()),
        };
        if ids.is_empty() || ids.len() > TAG_MACHINES_MAX {
            return Err(format!("'MachineIds' must list 1 to {TAG_MACHINES_MAX} machines, not {}.", ids.len()));
        }
        ids
    } else {
        Vec::new()
    };
    Ok(TagRequest { value: tag, add, machine_ids })
}

/// The `Comment` of an offboard body: a JSON object whose `Comment` (exact case) is a string.
fn read_comment(body: &[u8]) -> Result<String, &'static str> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "The request body is not valid JSON.")?;
    match value.get("Comment") {
        Some(serde_json::Value::String(comment)) => Ok(comment.clone()),
        Some(_) => Err("Comment must be a string."),
        None => Err("The request body must contain 'Comment' (names are case-sensitive)."),
    }
}
