//! The simulator, over real loopback HTTP: every route, every error, token expiry, quotas, the action
//! lifecycle, faults, fleet files and the sample files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mde_offboard::settings::DEFAULT_SCOPE;
use mde_sim::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID, Faults, Fleet, Lifecycle, SimConfig, SimMachine, SimStats,
    Simulator,
};
use serde_json::{Value, json};

use crate::common::post_as_demo_app;

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
const CANCEL: &str = "POST /api/machineactions/{id}/cancel";

/// A running simulator with a client signed in as the demo app.
struct Api {
    sim: Simulator,
    http: reqwest::Client,
    token: String,
}

fn config() -> SimConfig {
    SimConfig { fleet: Fleet::generate(300, 3), quotas: Vec::new(), ..SimConfig::default() }
}

fn demo_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", DEMO_CLIENT_SECRET),
        ("scope", DEFAULT_SCOPE),
    ]
}

impl Api {
    async fn start(config: SimConfig) -> Api {
        let sim = Simulator::start(config).await.expect("simulator starts");
        let http = reqwest::Client::new();
        let (status, body) = sign_in(&http, &sim, "oauth2/v2.0/token", &demo_form()).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().expect("access_token").to_string();
        Api { sim, http, token }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        read(self.response(path).await).await
    }

    /// The whole answer to `GET {path}` with the token, headers included.
    async fn response(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.sim.base_url())).bearer_auth(&self.token).send().await.expect("answer")
    }

    async fn offboard(&self, id: &str) -> (u16, Value) {
        self.offboard_with(id, json!({"Comment": "retired"})).await
    }

    async fn offboard_with(&self, id: &str, body: Value) -> (u16, Value) {
        let response = self.send_offboard(id, body).await.expect("answer");
        read(response).await
    }

    async fn send_offboard(&self, id: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/api/machines/{id}/offboard", self.sim.base_url()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
    }

    fn machine(&self, f: impl Fn(&SimMachine) -> bool) -> SimMachine {
        config_fleet().machines().iter().find(|m| f(m)).expect("the test fleet has such a machine").clone()
    }
}

fn config_fleet() -> Fleet {
    Fleet::generate(300, 3)
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn sign_in(http: &reqwest::Client, sim: &Simulator, route: &str, form: &[(&str, &str)]) -> (u16, Value) {
    sign_in_tenant(http, sim, DEMO_TENANT_ID, route, form).await
}

async fn sign_in_tenant(
    http: &reqwest::Client,
    sim: &Simulator,
    tenant: &str,
    route: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = http.post(format!("{}/{tenant}/{route}", sim.base_url())).form(form).send().await.expect("answer");
    read(response).await
}

fn api_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(error["message"].is_string() && error["target"].is_string(), "not an API error body: {body}");
    error["code"].as_str().unwrap_or("")
}

fn aadsts(body: &Value) -> (String, u64) {
    for key in ["error", "error_description", "timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "no {key} in {body}");
    }
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    assert!(body["error_description"].as_str().unwrap().starts_with(&format!("AADSTS{code}: ")), "{body}");
    (body["error"].as_str().unwrap().to_string(), code)
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

/// Polls until `check` holds, failing after `limit`.
async fn wait_for<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sign_in_v2_and_v1() {
    let api = Api::start(config()).await;
    let c = claims(&api.token);
    assert_eq!(c["tid"], DEMO_TENANT_ID);
    assert_eq!(c["appid"], DEMO_CLIENT_ID);
    assert_eq!(c["aud"], "https://api.securitycenter.microsoft.com");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{DEMO_TENANT_ID}/"));
    assert_eq!(c["roles"], json!(["Machine.Offboard", "Machine.Read.All"]));
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3599);
    assert!(c["nbf"].is_u64());

    let (status, body) = sign_in(&api.http, &api.sim, "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert!(body["ext_expires_in"].is_u64());

    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", DEMO_CLIENT_SECRET),
        ("resource", "https://api.securitycenter.microsoft.com"),
    ];
    let (status, body) = sign_in(&api.http, &api.sim, "oauth2/token", &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], "3599");
    assert!(body["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    // A v1 token works on the API.
    let response = api
        .http
        .get(format!("{}/api/machines?$top=1", api.sim.base_url()))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stats = api.sim.stats();
    assert_eq!(stats.tokens_issued, 3);
    assert_eq!(stats.count("POST /{tenant}/oauth2/v2.0/token", "200"), 2);
    assert_eq!(stats.count("POST /{tenant}/oauth2/token", "200"), 1);
    // Sign-in does not spend the quota and faults never touch it.
    assert!(stats.max_in_window.is_empty());
}

#[tokio::test]
async fn sign_in_errors_are_entra_errors() {
    let api = Api::start(config()).await;
    let v2 = "oauth2/v2.0/token";
    let with = |key: &'static str, value: &'static str| {
        let mut form: Vec<_> = demo_form().into_iter().filter(|(k, _)| *k != key).collect();
        if !value.is_empty() {
            form.push((key, value));
        }
        form
    };
    // (form, status, error, AADSTS code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, u64);
    let cases: Vec<Case> = vec![
        (with("client_secret", "wrong"), 401, "invalid_client", 7000215),
        (with("client_id", "11111111-2222-3333-4444-555555555555"), 400, "unauthorized_client", 700016),
        (with("grant_type", "password"), 400, "unsupported_grant_type", 70003),
        (with("scope", "https://api.securitycenter.microsoft.com"), 400, "invalid_scope", 70011),
        (with("scope", "https://graph.example.com/.default"), 400, "invalid_resource", 500011),
        (with("scope", ""), 400, "invalid_request", 900144),
        (with("client_secret", ""), 401, "invalid_client", 7000218),
        (with("resource", "https://api.securitycenter.microsoft.com"), 400, "invalid_request", 901002),
    ];
    for (form, status, error, code) in cases {
        let (got, body) = sign_in(&api.http, &api.sim, v2, &form).await;
        assert_eq!((got, aadsts(&body)), (status, (error.to_string(), code)), "{form:?}");
    }
    let (status, body) = sign_in_tenant(&api.http, &api.sim, "contoso.onmicrosoft.com", v2, &demo_form()).await;
    assert_eq!((status, aadsts(&body).1), (400, 90002));
    // v1 wants `resource`.
    let (status, body) = sign_in(&api.http, &api.sim, "oauth2/token", &demo_form()).await;
    assert_eq!((status, aadsts(&body).1), (400, 900144));

    let expired = Simulator::start(SimConfig { secret_expired: true, ..config() }).await.unwrap();
    let (status, body) = sign_in(&api.http, &expired, v2, &demo_form()).await;
    assert_eq!((status, aadsts(&body)), (401, ("invalid_client".to_string(), 7000222)));
    assert_eq!(api.sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn sign_in_with_a_certificate_assertion() {
    let api = Api::start(config()).await;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let aud = format!("{}/{DEMO_TENANT_ID}/oauth2/v2.0/token", api.sim.base_url());
    let jwt = |header: Value, claims: Value| {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": "abc"});
    let good = json!({"aud": aud, "iss": DEMO_CLIENT_ID, "sub": DEMO_CLIENT_ID, "jti": "x", "nbf": now, "iat": now, "exp": now + 600});
    let form = |assertion: &str| -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", DEMO_CLIENT_ID.into()),
            ("scope", DEFAULT_SCOPE.into()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
            ("client_assertion", assertion.into()),
        ]
    };
    let send = |assertion: String| {
        let http = api.http.clone();
        let url = format!("{}/{DEMO_TENANT_ID}/oauth2/v2.0/token", api.sim.base_url());
        async move { read(http.post(url).form(&form(&assertion)).send().await.unwrap()).await }
    };
    let (status, body) = send(jwt(header.clone(), good.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["appidacr"], "2");
    let mut stale = good.clone();
    stale["exp"] = json!(now - 60);
    assert_eq!(aadsts(&send(jwt(header.clone(), stale)).await.1).1, 700024);
    let mut other = good.clone();
    other["iss"] = json!("someone-else");
    assert_eq!(aadsts(&send(jwt(header.clone(), other)).await.1).1, 700021);
    assert_eq!(aadsts(&send(jwt(json!({"alg": "HS256"}), good)).await.1).1, 700027);
    assert_eq!(aadsts(&send("not-a-jwt".into()).await.1).1, 50027);
}

#[tokio::test]
async fn api_needs_a_live_token_it_issued() {
    // 20 s of service time at 100x: a token lives 200 ms.
    let api = Api::start(SimConfig { token_lifetime: Duration::from_secs(20), time_scale: 100.0, ..config() }).await;
    let issued = Instant::now();
    let url = format!("{}/api/machines?$top=1", api.sim.base_url());
    let (status, body) = read(api.http.get(&url).send().await.unwrap()).await;
    assert_eq!((status, api_code(&body)), (401, "Unauthorized"));
    let (status, body) =
        read(api.http.get(&url).bearer_auth("eyJ0eXAiOiJKV1QifQ.e30.c2ln").send().await.unwrap()).await;
    assert_eq!((status, api_code(&body)), (401, "Unauthorized"));
    assert_eq!(api.get("/api/machines?$top=1").await.0, 200);
    wait_for(Duration::from_secs(3), || async { api.get("/api/machines?$top=1").await.0 == 401 }).await;
    assert!(issued.elapsed() >= Duration::from_millis(150), "token died after {:?}", issued.elapsed());
    let (_, body) = sign_in(&api.http, &api.sim, "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!(body["expires_in"], 1, "rounded down, at least one second");
    // 401s do not count against a quota: there is no app to count them for.
    assert_eq!(api.sim.stats().count("GET /api/machines", "401"), 3);
}

#[tokio::test]
async fn offboard_creates_a_pending_action_once() {
    let api = Api::start(config()).await;
    let m = api.machine(|m| {
        m.health_status == "Active" && m.os_platform == "Windows11" && m.rbac_group_name == "Workstations"
    });
    let (status, action) = api.offboard(&m.id).await;
    assert_eq!(status, 201, "{action}");
    assert_eq!(action["type"], "Offboard");
    assert_eq!(action["status"], "Pending");
    assert_eq!(action["machineId"], m.id.as_str());
    assert_eq!(action["computerDnsName"], m.computer_dns_name.as_str());
    assert_eq!(action["requestor"], DEMO_CLIENT_ID);
    assert_eq!(action["requestorComment"], "retired");
    assert_eq!(action["requestSource"], "PublicApi");
    assert_eq!(action["errorHResult"], 0);
    assert_eq!(action["commands"], json!([]));
    for null in [
        "scope",
        "cancellationRequestor",
        "cancellationComment",
        "cancellationDateTimeUtc",
        "externalId",
        "relatedFileInfo",
    ] {
        assert!(action[null].is_null(), "{null}");
    }
    assert_eq!(action["id"].as_str().unwrap().len(), 36);
    assert!(action["title"].is_string());
    assert_eq!(action["creationDateTimeUtc"], action["lastUpdateDateTimeUtc"]);

    // Ids are case-insensitive, and an open action blocks a second one.
    let (status, body) = api.offboard(&m.id.to_uppercase()).await;
    assert_eq!((status, api_code(&body)), (400, "ActiveRequestAlreadyExists"));
    assert_eq!(body["error"]["message"], "Action is already in progress");

    let (status, read_back) = api.get(&format!("/api/machineactions/{}", action["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(read_back["id"], action["id"]);
    let stats = api.sim.stats();
    assert_eq!(stats.actions_created, 1);
    assert_eq!(stats.offboard_calls[&m.id].calls, 2);
    assert_eq!(stats.offboard_calls[&m.id].accepted, 1);
    assert_eq!(stats.count(OFFBOARD, "201"), 1);
    assert_eq!(stats.count(OFFBOARD, "400"), 1);
}

#[tokio::test]
async fn open_actions_can_be_cancelled_once() {
    let api = Api::start(config()).await;
    let m = api.machine(|m| m.health_status == "Active" && m.os_platform == "Windows11");
    let (_, action) = api.offboard(&m.id).await;
    let id = action["id"].as_str().unwrap().to_string();
    let cancel = format!("/api/machineactions/{id}/cancel");

    let (status, body) = post_as_demo_app(&api.sim, &cancel, json!({"comment": "lowercase"})).await;
    assert_eq!((status, api_code(&body)), (400, "InvalidRequestBody"), "names are case-sensitive");
    let (status, cancelled) = post_as_demo_app(&api.sim, &cancel, json!({"Comment": "wrong machine"})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "Cancelled");
    assert_eq!(cancelled["cancellationComment"], "wrong machine");
    assert_eq!(cancelled["cancellationRequestor"], DEMO_CLIENT_ID);
    assert_eq!(cancelled["cancellationDateTimeUtc"], cancelled["lastUpdateDateTimeUtc"]);
    let (_, read_back) = api.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(read_back["status"], "Cancelled");
    let (_, listed) = api.get("/api/machineactions?$filter=status eq 'Cancelled'").await;
    assert_eq!(listed["value"].as_array().unwrap().len(), 1);

    let (status, body) = post_as_demo_app(&api.sim, &cancel, json!({"Comment": "again"})).await;
    assert_eq!((status, api_code(&body)), (400, "InvalidRequest"), "a final action cannot be cancelled");
    let unknown = "/api/machineactions/00000000-0000-0000-0000-000000000000/cancel";
    let (status, body) = post_as_demo_app(&api.sim, unknown, json!({"Comment": "x"})).await;
    assert_eq!((status, api_code(&body)), (404, "ResourceNotFound"));
    // A cancelled offboard no longer blocks a new one.
    assert_eq!(api.offboard(&m.id).await.0, 201);
    assert_eq!(api.sim.stats().total(CANCEL), 4);
}

#[tokio::test]
async fn offboard_refusals() {
    let unsupported = config_fleet()
        .machines()
        .iter()
        .find(|m| m.os_platform == "Windows7" || m.os_platform == "WindowsServer2008R2")
        .unwrap()
        .id
        .clone();
    let plain = |m: &SimMachine| m.rbac_group_name == "Workstations" && m.os_platform.starts_with("Windows1");
    let singled_out = config_fleet().machines().iter().filter(|m| plain(m)).nth(3).unwrap().id.clone();
    let api = Api::start(SimConfig { forbidden_ids: vec![singled_out.to_uppercase()], ..config() }).await;
    let tier0 = api.machine(|m| m.rbac_group_name == "Tier0 Servers");
    let ok = api.machine(plain);

    let cases = [
        (singled_out.clone(), json!({"Comment": "x"}), 403, "Forbidden"),
        (tier0.id.clone(), json!({"Comment": "x"}), 403, "Forbidden"),
        (unsupported, json!({"Comment": "x"}), 400, "OsPlatformNotSupported"),
        ("0000000000000000000000000000000000000000".into(), json!({"Comment": "x"}), 404, "ResourceNotFound"),
        ("not-a-machine".into(), json!({"Comment": "x"}), 404, "ResourceNotFound"),
        (ok.id.clone(), json!({"comment": "wrong case"}), 400, "InvalidRequestBody"),
        (ok.id.clone(), json!({}), 400, "InvalidRequestBody"),
        (ok.id.clone(), json!({"Comment": 5}), 400, "InvalidRequestBody"),
    ];
    for (id, body, status, code) in cases {
        let (got, answer) = api.offboard_with(&id, body.clone()).await;
        assert_eq!((got, api_code(&answer)), (status, code), "{id} {body}");
    }
    let response = api
        .http
        .post(format!("{}/api/machines/{}/offboard", api.sim.base_url(), ok.id))
        .bearer_auth(&api.token)
        .body("Comment=x")
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!((status, api_code(&body)), (400, "InvalidRequestBody"));
    assert_eq!(api.sim.stats().actions_created, 0);
    assert_eq!(api.offboard(&ok.id).await.0, 201);
}

#[tokio::test]
async fn roles_decide_what_a_token_may_do() {
    let m = config_fleet().machines()[0].id.clone();
    let read_only = Api::start(SimConfig { roles: vec!["Machine.Read.All".into()], ..config() }).await;
    let (status, body) = read_only.offboard(&m).await;
    assert_eq!((status, api_code(&body)), (403, "Forbidden"));
    assert_eq!(read_only.get(&format!("/api/machines/{m}")).await.0, 200);

    let offboard_only = Api::start(SimConfig { roles: vec!["Machine.Offboard".into()], ..config() }).await;
    for path in [
        format!("/api/machines/{m}"),
        "/api/machines".into(),
        "/api/machineactions".into(),
        "/api/machineactions/x".into(),
    ] {
        let (status, body) = offboard_only.get(&path).await;
        assert_eq!((status, api_code(&body)), (403, "Forbidden"), "{path}");
    }
    let read_write = Api::start(SimConfig { roles: vec!["Machine.ReadWrite.All".into()], ..config() }).await;
    assert_eq!(read_write.get("/api/machines").await.0, 200);
}

#[tokio::test]
async fn machines_by_id_name_and_filter() {
    let api = Api::start(config()).await;
    let fleet = config_fleet();
    let m = &fleet.machines()[7];
    let (status, body) = api.get(&format!("/api/machines/{}", m.id.to_uppercase())).await;
    assert_eq!(status, 200);
    for field in [
        "id",
        "computerDnsName",
        "osPlatform",
        "healthStatus",
        "onboardingStatus",
        "lastSeen",
        "firstSeen",
        "rbacGroupName",
        "machineTags",
        "aadDeviceId",
    ] {
        assert!(body.get(field).is_some(), "no {field} in {body}");
    }
    assert_eq!(body["id"], m.id.as_str());
    assert!(body["@odata.context"].as_str().unwrap().ends_with("#Machines/$entity"));
    let (status, body) = api.get(&format!("/api/machines/{}", m.computer_dns_name)).await;
    assert_eq!((status, body["computerDnsName"].as_str()), (200, Some(m.computer_dns_name.as_str())));
    let (status, body) = api.get("/api/machines/nobody.contoso.local").await;
    assert_eq!((status, api_code(&body)), (404, "ResourceNotFound"));

    // A reimaged device: one name, several ids; a name filter finds them all.
    let shared =
        fleet.machines().iter().find(|m| fleet.by_name(&m.computer_dns_name).count() > 1).expect("a duplicated name");
    let (status, body) = api
        .get(&format!("/api/machines?$filter=computerDnsName eq '{}'", shared.computer_dns_name.to_uppercase()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), fleet.by_name(&shared.computer_dns_name).count());

    let (_, body) = api.get("/api/machines?$filter=healthStatus eq 'Inactive' and osPlatform eq 'Windows10'").await;
    let expected =
        fleet.machines().iter().filter(|m| m.health_status == "Inactive" && m.os_platform == "Windows10").count();
    assert!(expected > 0);
    assert_eq!(body["value"].as_array().unwrap().len(), expected);
    assert!(body["value"].as_array().unwrap().iter().all(|v| v["healthStatus"] == "Inactive"));
    let (_, body) = api.get(&format!("/api/machines?$filter=id eq '{}'", m.id)).await;
    assert_eq!(body["value"][0]["id"], m.id.as_str());

    let (status, body) = api.get("/api/machines?$top=10001").await;
    assert_eq!((status, api_code(&body)), (400, "InvalidInput"));
    // `or` and parentheses are OData: accepted.
    let (_, body) = api
        .get(&format!(
            "/api/machines?$filter=(id eq '{}' or id eq 'x') and healthStatus eq '{}'",
            m.id, m.health_status
        ))
        .await;
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1), "{body}");
    for bad in ["healthStatus eq Active", "colour eq 'red'", "(healthStatus eq 'Active' or id eq 'x'"] {
        let (status, body) = api.get(&format!("/api/machines?$filter={bad}")).await;
        assert_eq!((status, api_code(&body)), (400, "ODataError"), "{bad}");
    }
}

#[tokio::test]
async fn machine_pages_are_stable() {
    let api = Api::start(config()).await;
    let mut seen = Vec::new();
    for page in 0.. {
        let (status, body) = api.get(&format!("/api/machines?$top=70&$skip={}", page * 70)).await;
        assert_eq!(status, 200);
        assert!(body.get("@odata.nextLink").is_none());
        let value = body["value"].as_array().unwrap();
        seen.extend(value.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        if value.len() < 70 {
            break;
        }
    }
    assert_eq!(seen, config_fleet().ids().map(String::from).collect::<Vec<_>>());
    let (_, body) = api.get("/api/machines").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 300);
}

#[tokio::test]
async fn machine_actions_list_and_filter() {
    let api = Api::start(config()).await;
    let before = mde_offboard_rfc3339(SystemTime::now() - Duration::from_secs(1));
    let ids: Vec<String> = config_fleet()
        .machines()
        .iter()
        .filter(|m| {
            m.health_status == "Active" && m.rbac_group_name == "Workstations" && m.os_platform.starts_with("Windows1")
        })
        .take(5)
        .map(|m| m.id.clone())
        .collect();
    let mut action_ids = Vec::new();
    for id in &ids {
        let (status, action) = api.offboard(id).await;
        assert_eq!(status, 201);
        action_ids.push(action["id"].as_str().unwrap().to_string());
    }
    let list = |query: String| {
        let api = &api;
        async move {
            let (status, body) = api.get(&format!("/api/machineactions{query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            body["value"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(String::new()).await, action_ids);
    assert_eq!(list(format!("?$filter=machineId eq '{}'", ids[2])).await, vec![action_ids[2].clone()]);
    assert_eq!(list("?$filter=type eq 'Offboard' and status eq 'Pending'".into()).await.len(), 5);
    assert_eq!(list("?$filter=status eq 'Succeeded'".into()).await.len(), 0);
    assert_eq!(list(format!("?$filter=creationDateTimeUtc ge {before}")).await.len(), 5);
    assert_eq!(list(format!("?$filter=creationDateTimeUtc ge '{before}' and type eq 'Offboard'")).await.len(), 5);
    assert_eq!(list("?$filter=creationDateTimeUtc ge 2999-01-01T00:00:00Z".into()).await.len(), 0);
    assert_eq!(list("?$top=2&$skip=1".into()).await, action_ids[1..3].to_vec());
    let (status, body) = api.get("/api/machineactions?$filter=status eq Pending").await;
    assert_eq!((status, api_code(&body)), (400, "ODataError"));
    let (status, body) = api.get("/api/machineactions?$top=20000").await;
    assert_eq!((status, api_code(&body)), (400, "InvalidInput"));
    let (status, body) = api.get("/api/machineactions/6f1b5d2a-0000-4000-8000-000000000000").await;
    assert_eq!((status, api_code(&body)), (404, "ResourceNotFound"));
}

fn mde_offboard_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[tokio::test]
async fn actions_move_on_with_scaled_time() {
    // At 600x a minute lasts 100 ms.
    let lifecycle = Lifecycle {
        pending_for: Duration::from_secs(60),
        in_progress_for: Duration::from_secs(60),
        failed_share: 0.0,
        timeout_share: 0.0,
        action_timeout: Duration::from_secs(300),
    };
    let api = Api::start(SimConfig { time_scale: 600.0, lifecycle, ..config() }).await;
    let active = api.machine(|m| {
        m.health_status == "Active" && m.rbac_group_name == "Workstations" && m.os_platform.starts_with("Windows1")
    });
    let inactive = api.machine(|m| {
        m.health_status == "Inactive" && m.rbac_group_name == "Workstations" && m.os_platform.starts_with("Windows1")
    });
    let (_, a) = api.offboard(&active.id).await;
    let (_, b) = api.offboard(&inactive.id).await;
    let path = |a: &Value| format!("/api/machineactions/{}", a["id"].as_str().unwrap());
    let mut seen: Vec<String> = Vec::new();
    let started = Instant::now();
    while seen.last().map(String::as_str) != Some("Succeeded") {
        assert!(started.elapsed() < Duration::from_secs(5), "still {seen:?}");
        let status = api.get(&path(&a)).await.1["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["Pending", "InProgress", "Succeeded"]);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (_, done) = api.get(&path(&a)).await;
    assert_ne!(done["lastUpdateDateTimeUtc"], done["creationDateTimeUtc"]);
    // Once final, the machine can be offboarded again.
    assert_eq!(api.offboard(&active.id).await.0, 201);

    let (_, pending) = api.get(&path(&b)).await;
    assert_eq!(pending["status"], "Pending", "an inactive machine never picks the action up");
    wait_for(Duration::from_secs(5), || async { api.get(&path(&b)).await.1["status"] == "TimeOut" }).await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    let stats = api.sim.stats();
    assert_eq!(stats.actions_by_status.get("TimeOut"), Some(&1));
}

#[tokio::test]
async fn quotas_hold_under_a_storm() {
    let api =
        Api::start(SimConfig { quotas: vec!["20/1s".parse().unwrap(), "30/1h".parse().unwrap()], ..config() }).await;
    let calls = (0..60).map(|_| api.get("/api/machines?$top=1"));
    let answers = futures_join_all(calls).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let throttled: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok, 20);
    assert_eq!(throttled.len(), 40);
    assert_eq!(api_code(&throttled[0].1), "TooManyRequests");
    let stats = api.sim.stats();
    assert_eq!(stats.throttled, 40);
    assert_eq!(stats.quota_rejections, 40);
    let minute = &stats.max_in_window[0];
    assert_eq!((minute.quota.as_str(), minute.limit, minute.max_seen, minute.max_offered), ("20/1s", 20, 20, 60));

    // Retry-After: whole seconds until the window frees; after it, the call goes through.
    let response = api.response("/api/machines?$top=1").await;
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(wait, 1);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(api.get("/api/machines?$top=1").await.0, 200);
    // Now the hour binds (21 of 30 used): 9 more, then a long wait.
    let answers = futures_join_all((0..15).map(|_| api.get("/api/machines?$top=1"))).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 9);
    let response = api.response("/api/machines?$top=1").await;
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&wait), "{wait}");
    assert!(api.sim.stats().max_in_window.iter().all(|w| w.max_seen <= w.limit));
}

#[tokio::test]
async fn quota_periods_scale_and_retry_after_can_be_a_date() {
    // 100 a minute at 60x: 100 a second.
    let api = Api::start(SimConfig {
        quotas: vec!["100/1m".parse().unwrap()],
        time_scale: 60.0,
        retry_after_http_date: true,
        ..config()
    })
    .await;
    let answers = futures_join_all((0..130).map(|_| api.get("/api/machines?$top=1"))).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 100);
    let response = api.response("/api/machines?$top=1").await;
    assert_eq!(response.status(), 429);
    let date = httpdate::parse_http_date(response.headers()["retry-after"].to_str().unwrap()).expect("an HTTP-date");
    let wait = date.duration_since(SystemTime::now() - Duration::from_millis(50)).expect("in the future");
    // Whole seconds, rounded up, on a loaded machine: generous.
    assert!(wait <= Duration::from_secs(3), "{wait:?}");
    let stats = api.sim.stats();
    assert_eq!(stats.max_in_window[0].period_ms, 1000);
    assert_eq!(stats.max_in_window[0].max_seen, 100);
    tokio::time::sleep(date.duration_since(SystemTime::now()).unwrap_or_default()).await;
    assert_eq!(api.get("/api/machines?$top=1").await.0, 200);
}

/// Runs futures concurrently (on this task) and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

fn faulty(seed: u64) -> Faults {
    Faults {
        seed,
        error_500: 0.15,
        error_503: 0.1,
        spurious_429: 0.1,
        transient_404: 0.15,
        spurious_429_retry_after: Duration::from_secs(7),
        ..Faults::default()
    }
}

/// Statuses of three rounds of calls on a few paths, sent path by path or round by round.
async fn fault_run(seed: u64, path_major: bool) -> BTreeMap<String, Vec<u16>> {
    let api = Api::start(SimConfig { faults: faulty(seed), ..config() }).await;
    let paths: Vec<String> = config_fleet().ids().take(12).map(|id| format!("/api/machines/{id}")).collect();
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let order: Vec<(usize, usize)> = if path_major {
        (0..12).flat_map(|p| (0..3).map(move |r| (p, r))).collect()
    } else {
        (0..3).flat_map(|r| (0..12).rev().map(move |p| (p, r))).collect()
    };
    for (p, _) in order {
        let (status, body) = api.get(&paths[p]).await;
        if status != 200 {
            api_code(&body);
        }
        out.entry(paths[p].clone()).or_default().push(status);
    }
    let stats = api.sim.stats();
    assert_eq!(
        stats.faults.spurious_429 + stats.faults.error_500 + stats.faults.error_503 + stats.faults.transient_404,
        out.values().flatten().filter(|s| **s != 200).count() as u64
    );
    out
}

#[tokio::test]
async fn faults_repeat_under_a_seed() {
    let a = fault_run(11, true).await;
    let b = fault_run(11, false).await;
    assert_eq!(a, b);
    let statuses: Vec<u16> = a.values().flatten().copied().collect();
    for status in [200, 404, 500] {
        assert!(statuses.contains(&status), "{status} never drawn: {statuses:?}");
    }
    assert_ne!(a, fault_run(12, true).await);
}

#[tokio::test]
async fn spurious_429_and_latency() {
    let api = Api::start(config()).await;
    api.sim.set_faults(Faults {
        spurious_429: 1.0,
        spurious_429_retry_after: Duration::from_secs(7),
        latency: Duration::from_millis(60),
        ..Faults::default()
    });
    let started = Instant::now();
    let response = api.response("/api/machines?$top=1").await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    // Sign-in and stats are never faulted.
    assert_eq!(sign_in(&api.http, &api.sim, "oauth2/v2.0/token", &demo_form()).await.0, 200);
    assert_eq!(api.http.get(format!("{}/sim/stats", api.sim.base_url())).send().await.unwrap().status(), 200);
    api.sim.set_faults(Faults::default());
    assert_eq!(api.get("/api/machines?$top=1").await.0, 200);
    let stats = api.sim.stats();
    assert_eq!((stats.throttled, stats.quota_rejections, stats.faults.spurious_429), (1, 0, 1));
}

#[tokio::test]
async fn dropped_connections_sometimes_after_the_offboard() {
    let api = Api::start(config()).await;
    api.sim.set_faults(Faults { seed: 5, drop_connection: 1.0, ..Faults::default() });
    let ids: Vec<String> = config_fleet()
        .machines()
        .iter()
        .filter(|m| m.rbac_group_name == "Workstations" && m.os_platform.starts_with("Windows1"))
        .take(40)
        .map(|m| m.id.clone())
        .collect();
    for id in &ids {
        let error = api.send_offboard(id, json!({"Comment": "x"})).await.expect_err("the connection is dropped");
        assert!(!error.is_status() && !error.is_timeout(), "{error}");
    }
    assert!(api.http.get(format!("{}/api/machines", api.sim.base_url())).bearer_auth(&api.token).send().await.is_err());
    // A drop drawn for after the action drops whatever the answer would have been.
    let unknown = "0000000000000000000000000000000000000000";
    for _ in 0..6 {
        assert!(api.send_offboard(unknown, json!({"Comment": "x"})).await.is_err());
    }
    let stats = api.sim.stats();
    assert_eq!(stats.faults.dropped, 47);
    assert_eq!(stats.count(OFFBOARD, "dropped"), 46);
    assert_eq!(stats.offboard_calls[unknown], mde_sim::OffboardCount { calls: 6, accepted: 0 });
    assert!((8..=32).contains(&stats.actions_created), "{} of 40 applied before the drop", stats.actions_created);

    // The storm ends: the applied ones now answer "already in progress", the others are created.
    api.sim.set_faults(Faults::default());
    let mut already = 0;
    for id in &ids {
        let (status, body) = api.offboard(id).await;
        match status {
            201 => {}
            400 if api_code(&body) == "ActiveRequestAlreadyExists" => already += 1,
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(already, stats.actions_created);
    assert_eq!(api.sim.stats().actions_created, 40);
}

#[tokio::test]
async fn stats_over_http_and_unknown_routes() {
    let api = Api::start(config()).await;
    let (status, body) = api.get("/api/nothing-here").await;
    assert_eq!((status, api_code(&body)), (404, "NotFound"));
    api.offboard("0000000000000000000000000000000000000000").await;
    let stats: SimStats =
        api.http.get(format!("{}/sim/stats", api.sim.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats.count(OFFBOARD, "404"), 1);
    assert_eq!(stats.offboard_calls["0000000000000000000000000000000000000000"].calls, 1);
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.count("unmatched", "404"), 1);
    assert!(!stats.calls.keys().any(|k| k.contains("stats")));
    // Without the calls per machine, for a client that keeps its memory small; the counters are the same.
    let brief: SimStats = serde_json::from_value(api.get("/sim/stats?per_machine=no").await.1).unwrap();
    assert!(brief.offboard_calls.is_empty());
    assert_eq!((brief.count(OFFBOARD, "404"), brief.tokens_issued), (1, 1));
    api.sim.shutdown().await;
}

#[tokio::test]
async fn fleet_files_load_and_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let header = "id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n";
    let good = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07,ws-1.contoso.local,Windows11,Active,2024-05-01T12:00:00Z,Workstations\n";
    let fleet = Fleet::from_csv(&write("ok.csv", &format!("{header}{good}"))).unwrap();
    assert_eq!(fleet.len(), 1);
    assert_eq!(fleet.get("1E5BC9D7E413DDD7902C2932E418702B84D0CC07").unwrap().os_platform, "Windows11");
    let cases = [
        ("short.csv", format!("{header}{good}abc,ws-2,Windows11,Active,2024-05-01T12:00:00Z,Workstations\n"), "line 3"),
        ("health.csv", format!("{header}{}", good.replace("Active", "Sleepy")), "line 2"),
        ("date.csv", format!("{header}{}", good.replace("2024-05-01T12:00:00Z", "yesterday")), "line 2"),
        ("twice.csv", format!("{header}{good}{good}"), "line 3"),
        ("header.csv", format!("id,name\n{good}"), "computerDnsName"),
    ];
    for (name, text, needle) in cases {
        let message = Fleet::from_csv(&write(name, &text)).unwrap_err().to_string();
        assert!(message.contains(name) && message.contains(needle), "{message}");
    }
    assert!(Fleet::from_csv(&dir.path().join("missing.csv")).unwrap_err().to_string().contains("missing.csv"));
}

#[test]
fn sample_files_fit_the_demo() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let fleet = Fleet::from_csv(&samples.join("fleet.csv")).expect("samples/fleet.csv loads");
    assert!((200..=250).contains(&fleet.len()));
    let machines = fleet.machines();
    assert!(machines.iter().filter(|m| m.rbac_group_name == "Tier0 Servers").count() >= 3);
    assert!(machines.iter().filter(|m| m.health_status == "Inactive").count() >= 5);
    assert!(
        machines.iter().filter(|m| SimConfig::default().unsupported_platforms.contains(&m.os_platform)).count() >= 2
    );

    let mut reader = csv::Reader::from_path(samples.join("machines.csv")).unwrap();
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ["MachineId", "ComputerName", "Reason"]);
    let ids: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_string()).collect();
    assert!((195..=230).contains(&ids.len()));
    let valid = |id: &str| id.trim().len() == 40 && id.trim().bytes().all(|c| c.is_ascii_hexdigit());
    let known = ids.iter().filter(|id| valid(id) && fleet.get(id.trim()).is_some()).count();
    let unknown = ids.iter().filter(|id| valid(id) && fleet.get(id.trim()).is_none()).count();
    let malformed = ids.iter().filter(|id| !valid(id)).count();
    assert!(
        known >= 190 && (2..=5).contains(&unknown) && (3..=6).contains(&malformed),
        "{known} {unknown} {malformed}"
    );
    assert!(ids.iter().any(|id| id.bytes().any(|c| c.is_ascii_uppercase()) && valid(id)));

    let mut reader = csv::Reader::from_path(samples.join("device-inventory-export.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[0], "Device ID");
    let rows: Vec<_> = reader.records().map(Result::unwrap).collect();
    assert!((25..=35).contains(&rows.len()));
    assert!(rows.iter().all(|r| fleet.get(&r[0]).is_some()));
}

/// Writes the demo's sample files. Run once: `cargo test --test sim write_samples -- --ignored`.
#[test]
#[ignore = "writes samples/; run by hand when the samples must change"]
fn write_samples() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    let fleet = Fleet::generate(220, 2024);
    let machines = fleet.machines();

    let mut out = csv::Writer::from_path(samples.join("fleet.csv")).unwrap();
    out.write_record(["id", "computerDnsName", "osPlatform", "healthStatus", "lastSeen", "rbacGroupName"]).unwrap();
    for m in machines {
        out.write_record([
            &m.id,
            &m.computer_dns_name,
            &m.os_platform,
            &m.health_status,
            &m.last_seen,
            &m.rbac_group_name,
        ])
        .unwrap();
    }
    out.flush().unwrap();

    let reasons = [
        "Hardware refresh",
        "Decommissioned",
        "Reimaged - duplicate record",
        "Employee left",
        "Lab teardown",
        "Moved to another tenant",
        "Stolen - reported to security",
        "End of lease",
    ];
    let mut rng = fastrand::Rng::with_seed(2024);
    let mut picked: Vec<&SimMachine> = machines.iter().collect();
    rng.shuffle(&mut picked);
    picked.truncate(190);
    let mut rows: Vec<[String; 3]> = picked
        .iter()
        .map(|m| [m.id.clone(), m.computer_dns_name.clone(), reasons[rng.usize(..reasons.len())].to_string()])
        .collect();
    // Valid but unusual: upper case, spaces around.
    rows[10][0] = rows[10][0].to_uppercase();
    rows[77][0] = rows[77][0].to_uppercase();
    rows[31][0] = format!("  {}  ", rows[31][0]);
    rows[140][0] = format!(" {}", rows[140][0]);
    // Duplicates, one of them differing only in case.
    let dup = |i: usize, rows: &Vec<[String; 3]>| {
        [rows[i][0].trim().to_string(), rows[i][1].clone(), "Listed twice".to_string()]
    };
    let duplicates = [
        dup(5, &rows),
        dup(60, &rows),
        dup(120, &rows),
        [rows[40][0].to_uppercase(), rows[40][1].clone(), "Listed twice".into()],
    ];
    let malformed = [
        [rows[3][0][..16].to_string(), "ws-0003.contoso.local".into(), "Typo in ticket".into()],
        [format!("{}g", &rows[4][0][..39]), "ws-0004.contoso.local".into(), "Typo in ticket".into()],
        [String::new(), "kiosk-lobby.contoso.local".into(), "Decommissioned".into()],
        [format!("{}0", rows[8][0]), "srv-0099.contoso.local".into(), "Copied with an extra digit".into()],
    ];
    let unknown = [
        [
            "9b2c4f6e8a0d1c3e5f7a9b1d3f5e7c9a1b3d5f70".to_string(),
            "ws-9001.contoso.local".to_string(),
            "Already removed from inventory".to_string(),
        ],
        ["0a1b2c3d4e5f60718293a4b5c6d7e8f901234567".into(), "ws-9002.contoso.local".into(), "Decommissioned".into()],
        ["ffffeeee0000111122223333444455556666aaaa".into(), "srv-9003.contoso.local".into(), "Wrong tenant".into()],
    ];
    for (k, row) in duplicates.into_iter().chain(malformed).chain(unknown).enumerate() {
        rows.insert(15 + k * 16, row);
    }
    let mut out = csv::Writer::from_path(samples.join("machines.csv")).unwrap();
    out.write_record(["MachineId", "ComputerName", "Reason"]).unwrap();
    for row in &rows {
        out.write_record(row).unwrap();
    }
    out.flush().unwrap();

    let mut out = csv::Writer::from_path(samples.join("device-inventory-export.csv")).unwrap();
    out.write_record([
        "Device ID",
        "Device Name",
        "Domain",
        "First Seen",
        "Last device update",
        "OS Platform",
        "OS Distribution",
        "OS Version",
        "Health Status",
        "Onboarding Status",
        "Device Value",
        "Exposure Level",
        "Risk Level",
        "Tags",
        "Managed By",
        "Device Category",
        "Device Type",
    ])
    .unwrap();
    for m in machines.iter().step_by(7).take(30) {
        let (name, domain) = m.computer_dns_name.split_once('.').unwrap_or((&m.computer_dns_name, ""));
        let distribution = match m.os_platform.as_str() {
            "Linux" => "Ubuntu",
            "macOS" => "macOS",
            p if p.starts_with("WindowsServer") => "Windows Server",
            _ => "Windows",
        };
        let tags = serde_json::to_string(&m.machine_tags).unwrap();
        let server = m.os_platform.starts_with("WindowsServer") || name.starts_with("srv-");
        out.write_record([
            m.id.as_str(),
            name,
            domain,
            &m.first_seen,
            &m.last_seen,
            &m.os_platform,
            distribution,
            m.version.as_deref().unwrap_or(""),
            &m.health_status,
            &m.onboarding_status,
            &m.device_value,
            &m.exposure_level,
            &m.risk_score,
            &tags,
            if m.is_aad_joined { "Intune" } else { "Unknown" },
            "Endpoint",
            if server { "Server" } else { "Workstation" },
        ])
        .unwrap();
    }
    out.flush().unwrap();
}

#[derive(clap::Parser)]
struct SimulateCli {
    #[command(flatten)]
    args: mde_sim::SimulateArgs,
}

#[tokio::test]
async fn simulate_serves_until_shutdown() {
    use clap::Parser;
    let args = SimulateCli::try_parse_from(["simulate", "--listen", "127.0.0.1:0", "--fleet-size", "5", "--no-quotas"])
        .unwrap()
        .args;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(mde_sim::simulate(args, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!run.is_finished(), "simulate returned before shutdown");
    stop.send(()).unwrap();
    run.await.unwrap().expect("simulate ends cleanly");

    // A port in use is a simulator error, not a panic.
    let busy = Simulator::start(config()).await.unwrap();
    let error = Simulator::start(SimConfig { listen: busy.addr(), ..config() }).await.err().expect("the port is taken");
    assert!(matches!(error, mde_sim::Error::Simulator(_)), "{error}");
    let error =
        Simulator::start(SimConfig { time_scale: 0.0, ..config() }).await.err().expect("time scale 0 is refused");
    assert!(error.to_string().contains("time scale"), "{error}");
}

#[tokio::test]
async fn several_tenants_each_with_its_own_fleet_tokens_and_quotas() {
    let first = SimConfig { quotas: vec!["2/1h".parse().unwrap()], ..config() };
    let mut tenants = mde_sim::tenant_series(first, 3, |k| Fleet::generate(300, 3 + k as u64)).unwrap();
    tenants[2].consented = false;
    let (a, b) = (tenants[0].tenant_id.clone(), tenants[1].tenant_id.clone());
    let (a_machine, b_machine) = (tenants[0].fleet.machines()[0].id.clone(), tenants[1].fleet.machines()[0].id.clone());
    let sim = Simulator::start_tenants(tenants).await.unwrap();
    let http = reqwest::Client::new();
    let token = |body: Value| body["access_token"].as_str().expect("access_token").to_string();
    let (status, body) = sign_in_tenant(&http, &sim, &a, "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!(status, 200, "{body}");
    let a_token = token(body);
    // The second tenant by its domain, as today's tenant_domains; its token names it by id.
    let (status, body) =
        sign_in_tenant(&http, &sim, "TENANT2.onmicrosoft.com", "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!(status, 200, "{body}");
    let b_token = token(body);
    assert_eq!(claims(&b_token)["tid"], b.to_ascii_lowercase());
    // The third has not consented to the app.
    let (status, body) =
        sign_in_tenant(&http, &sim, "tenant3.onmicrosoft.com", "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!((status, aadsts(&body).1), (400, 700016), "{body}");
    let (status, body) =
        sign_in_tenant(&http, &sim, "tenant4.onmicrosoft.com", "oauth2/v2.0/token", &demo_form()).await;
    assert_eq!((status, aadsts(&body).1), (400, 90002), "{body}");

    let get = |path: String, token: String| {
        let request = http.get(format!("{}{path}", sim.base_url())).bearer_auth(token);
        async move { read(request.send().await.expect("answer")).await }
    };
    // Each token reads its own tenant's fleet only.
    assert_eq!(get(format!("/api/machines/{a_machine}"), a_token.clone()).await.0, 200);
    assert_eq!(get(format!("/api/machines/{b_machine}"), b_token.clone()).await.0, 200);
    let (status, body) = get(format!("/api/machines/{b_machine}"), a_token.clone()).await;
    assert_eq!((status, api_code(&body)), (404, "ResourceNotFound"), "{body}");
    assert_eq!(get(format!("/api/machines/{a_machine}"), b_token.clone()).await.0, 404);
    // Each tenant its own quota of 2 calls an hour (one budget would have refused the third call above).
    assert_eq!(get(format!("/api/machines/{a_machine}"), a_token).await.0, 429);
    assert_eq!(get(format!("/api/machines/{b_machine}"), b_token).await.0, 429);
    let count = |tenant: &str, status| sim.tenant_stats(tenant).unwrap().count("GET /api/machines/{id}", status);
    assert_eq!((count(&a, "200"), count(&a, "404"), count(&a, "429")), (1, 1, 1));
    assert_eq!((count("tenant2.onmicrosoft.com", "200"), count(&b, "404"), count(&b, "429")), (1, 1, 1));
    assert_eq!(sim.stats().count("GET /api/machines/{id}", "200"), 1, "the first tenant's stats");
    let stats: Value = get(format!("/sim/stats?tenant={b}"), String::new()).await.1;
    assert_eq!(stats["calls"]["GET /api/machines/{id}"]["429"], 1, "{stats}");
}

#[tokio::test]
async fn stats_say_when_the_first_and_the_last_action_were_created() {
    let api = Api::start(config()).await;
    let stats = api.sim.stats();
    assert_eq!((stats.first_action_ms, stats.last_action_ms), (None, None));
    let a = api.machine(|m| m.health_status == "Active" && m.os_platform == "Windows11");
    let b = api.machine(|m| m.health_status == "Active" && m.os_platform == "Windows11" && m.id != a.id);
    assert_eq!(api.offboard(&a.id).await.0, 201);
    let after_first = api.sim.stats();
    assert_eq!(after_first.first_action_ms, after_first.last_action_ms);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // A refused call creates nothing: the span is of actions created.
    assert_eq!(api.offboard(&a.id).await.0, 400);
    assert_eq!(api.sim.stats().last_action_ms, after_first.last_action_ms);
    assert_eq!(api.offboard(&b.id).await.0, 201);
    let stats = api.sim.stats();
    let (first, last) = (stats.first_action_ms.unwrap(), stats.last_action_ms.unwrap());
    assert_eq!(Some(first), after_first.first_action_ms);
    assert!(last >= first + 50, "{first} ms to {last} ms, with 50 ms between");
}
