//! The Confluent Schema Registry REST API over [`Registry`].
//!
//! Responses use `application/vnd.schemaregistry.v1+json`; errors are
//! `{"error_code": 40401, "message": "..."}` with Confluent's codes.
//!
//! Every route needs a token the node knows, the same tokens as the
//! control-plane API ([`crate::auth`]): `Authorization: Bearer <token>`,
//! or HTTP basic authentication with the token as the password (how
//! Confluent's clients send `basic.auth.user.info`). Without one: 401,
//! error 40101. Admins, owners and subscribers read (GETs, the lookup
//! `POST /subjects/{subject}`, the compatibility checks); the auditor, who
//! reads and verifies the audit trail and nothing else, does not. Only
//! `admin` changes the registry over HTTP (registering, deleting subjects
//! or versions, setting compatibility). A refusal is 403, error 40301,
//! with the rule. The node's own feeds and distributor register their
//! schemas in-process, not over HTTP. A node without tokens answers nobody.
//!
//! Who may call a handler is in its signature: its first argument is a
//! [`Reader`] or an [`Admin`], extracted (and refused) before anything
//! else of the request is read.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Authenticator, Principal};
use crate::registry::{Level, Registry, RegistryError, VersionSel};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What the handlers share: the registry and who may call it.
#[derive(Clone)]
struct RegistryApi {
    registry: Registry,
    auth: Authenticator,
}

impl FromRef<RegistryApi> for Registry {
    fn from_ref(api: &RegistryApi) -> Self {
        api.registry.clone()
    }
}

impl FromRef<RegistryApi> for Authenticator {
    fn from_ref(api: &RegistryApi) -> Self {
        api.auth.clone()
    }
}

/// A caller with a token the node knows, other than the auditor: may read
/// the registry.
pub struct Reader(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Reader
where
    Authenticator: FromRef<S>,
{
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Authenticator::from_ref(state)
            .authenticate(&parts.headers)
            .await
            .map_err(|e| {
                RegistryError::new(
                    401,
                    40101,
                    format!("Unauthorized: {e}; the schema registry takes the node's API tokens"),
                )
            })?;
        match principal {
            Principal::Auditor => Err(RegistryError::new(
                403,
                40301,
                "Forbidden: the auditor reads and verifies the audit trail and nothing else; the schema registry is read by admin, owners and subscribers",
            )),
            p => Ok(Reader(p)),
        }
    }
}

/// An admin: may change the registry.
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    Authenticator: FromRef<S>,
{
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Reader::from_request_parts(parts, state).await?.0 {
            Principal::Admin => Ok(Admin),
            other => Err(RegistryError::new(
                403,
                40301,
                format!(
                    "Forbidden: {} may read the schema registry but not change it; over HTTP only admin registers schemas, deletes subjects or versions and sets compatibility",
                    other.name()
                ),
            )),
        }
    }
}

/// The registry's routes, to merge into the node's router; `auth` knows the
/// same tokens as the API's.
pub fn router(registry: Registry, auth: Authenticator) -> Router {
    Router::new()
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route("/schemas/types", get(schema_types))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .with_state(RegistryApi { registry, auth })
}

fn reply(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).expect("registry answers serialize");
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

fn ok(body: impl Serialize) -> Response {
    reply(StatusCode::OK, &body)
}

// The answers, as Confluent's Schema Registry names their fields (its
// clients read them).

/// An error: Confluent's code (e.g. 40401 subject not found) and message.
#[derive(Serialize)]
struct ErrorAnswer<'a> {
    error_code: u32,
    message: &'a str,
}

/// `POST /subjects/{subject}/versions`.
#[derive(Serialize)]
struct IdAnswer {
    id: u32,
}

/// A subject's version with its schema.
#[derive(Serialize)]
struct VersionAnswer {
    subject: String,
    id: u32,
    version: u32,
    schema: String,
}

/// `GET /schemas/ids/{id}`.
#[derive(Serialize)]
struct SchemaAnswer {
    schema: String,
}

/// `GET /schemas/ids/{id}/versions`: where a schema is used.
#[derive(Serialize)]
struct Usage {
    subject: String,
    version: u32,
}

/// A compatibility check; `messages` only when asked (`verbose=true`).
#[derive(Serialize)]
struct CompatibilityAnswer {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

impl CompatibilityAnswer {
    fn new(reasons: Vec<String>, verbose: bool) -> Self {
        Self {
            is_compatible: reasons.is_empty(),
            messages: verbose.then_some(reasons),
        }
    }
}

/// A compatibility level read (Confluent names it `compatibilityLevel`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LevelAnswer {
    compatibility_level: Level,
}

/// A compatibility level set.
#[derive(Serialize)]
struct LevelSet {
    compatibility: Level,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        reply(
            status,
            &ErrorAnswer {
                error_code: self.code,
                message: &self.message,
            },
        )
    }
}

type ApiResult = Result<Response, RegistryError>;

/// Parses a JSON body, answering Confluent-style when it is not JSON.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RegistryError::new(
            400,
            400,
            format!(
                "Unrecognized request body: {e}; expected JSON such as {{\"schema\": \"...\"}}"
            ),
        )
    })
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    fn parse(bytes: &Bytes) -> Result<apache_avro::Schema, RegistryError> {
        let b: SchemaBody = body(bytes)?;
        if let Some(t) = b.schema_type.as_deref() {
            if !t.eq_ignore_ascii_case("AVRO") {
                return Err(RegistryError::invalid_schema(format!(
                    "schemaType {t} is not supported; backflow's registry serves AVRO schemas"
                )));
            }
        }
        if !b.references.is_empty() {
            return Err(RegistryError::invalid_schema(
                "schema references are not supported; inline the referenced types",
            ));
        }
        Registry::parse(&b.schema)
    }
}

#[derive(Deserialize, Default)]
struct Flags {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    verbose: bool,
    #[serde(default, rename = "defaultToGlobal")]
    default_to_global: bool,
}

fn version_sel(subject: &str, v: &str) -> Result<VersionSel, RegistryError> {
    if v == "latest" || v == "-1" {
        return Ok(VersionSel::Latest);
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionSel::Number(n)),
        _ => Err(RegistryError::new(
            422,
            42202,
            format!("The specified version '{v}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\" (subject '{subject}')"),
        )),
    }
}

fn schema_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))
}

async fn list_subjects(_: Reader, State(r): State<Registry>, Query(f): Query<Flags>) -> ApiResult {
    Ok(ok(r.state().await.subjects(f.deleted)))
}

async fn list_versions(
    _: Reader,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let versions = r
        .state()
        .await
        .versions(&subject, f.deleted)
        .map_err(|_| RegistryError::subject_not_found(&subject))?;
    Ok(ok(versions))
}

async fn register(
    _: Admin,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let schema = SchemaBody::parse(&bytes)?;
    let id = r.register(&subject, &schema).await?;
    Ok(ok(IdAnswer { id }))
}

async fn lookup(
    _: Reader,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    bytes: Bytes,
) -> ApiResult {
    let schema = SchemaBody::parse(&bytes)?;
    let text = crate::registry::state::normalize(&schema);
    let st = r.state().await;
    let versions = st
        .versions(&subject, f.deleted)
        .map_err(|_| RegistryError::subject_not_found(&subject))?;
    let id = st
        .id_of(&text)
        .ok_or_else(RegistryError::schema_not_found)?;
    for v in versions.into_iter().rev() {
        if let Ok((_, entry)) = st.version(&subject, VersionSel::Number(v), f.deleted) {
            if entry.id == id {
                return Ok(ok(VersionAnswer {
                    subject,
                    id,
                    version: v,
                    schema: entry.text.clone(),
                }));
            }
        }
    }
    Err(RegistryError::schema_not_found())
}

/// The version a request names: `(version, id, schema text)`.
async fn find_version(
    r: &Registry,
    subject: &str,
    version: &str,
    deleted: bool,
) -> Result<(u32, u32, String), RegistryError> {
    let sel = version_sel(subject, version)?;
    let st = r.state().await;
    let (v, entry) = st
        .version(subject, sel, deleted)
        .map_err(|m| RegistryError::lookup(m, subject, version))?;
    Ok((v, entry.id, entry.text.clone()))
}

async fn get_version(
    _: Reader,
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let (v, id, text) = find_version(&r, &subject, &version, f.deleted).await?;
    Ok(ok(VersionAnswer {
        subject,
        id,
        version: v,
        schema: text,
    }))
}

async fn get_version_schema(
    _: Reader,
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let (_, _, text) = find_version(&r, &subject, &version, f.deleted).await?;
    Ok(ok(schema_json(&text)))
}

async fn delete_version(
    _: Admin,
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let sel = version_sel(&subject, &version)?;
    let v = r.delete_version(&subject, sel, f.permanent).await?;
    Ok(ok(v))
}

async fn delete_subject(
    _: Admin,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    Ok(ok(r.delete_subject(&subject, f.permanent).await?))
}

fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse().map_err(|_| RegistryError::schema_not_found())
}

async fn get_schema(_: Reader, State(r): State<Registry>, Path(id): Path<String>) -> ApiResult {
    let st = r.state().await;
    let entry = st
        .schema(parse_id(&id)?)
        .ok_or_else(RegistryError::schema_not_found)?;
    Ok(ok(SchemaAnswer {
        schema: entry.text.clone(),
    }))
}

async fn get_schema_versions(
    _: Reader,
    State(r): State<Registry>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let st = r.state().await;
    st.schema(id).ok_or_else(RegistryError::schema_not_found)?;
    let usages: Vec<Usage> = st
        .usages(id)
        .into_iter()
        .map(|(subject, version)| Usage {
            subject: subject.to_owned(),
            version,
        })
        .collect();
    Ok(ok(usages))
}

async fn schema_types(_: Reader) -> ApiResult {
    Ok(ok(["AVRO"]))
}

async fn check_compatibility(
    _: Reader,
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
    bytes: Bytes,
) -> ApiResult {
    let sel = version_sel(&subject, &version)?;
    let schema = SchemaBody::parse(&bytes)?;
    let st = r.state().await;
    let level = st.level(Some(&subject));
    let (v, entry) = st
        .version(&subject, sel, false)
        .map_err(|m| RegistryError::lookup(m, &subject, &version))?;
    // Against one version: the transitive levels reduce to the plain ones.
    let reasons = crate::registry::compat::check(level, &schema, &[(v, entry.schema.as_ref())]);
    Ok(ok(CompatibilityAnswer::new(reasons, f.verbose)))
}

/// Checks a schema against every live version of the subject, as a
/// registration would (an unknown subject is compatible: it has no history).
async fn check_compatibility_all(
    _: Reader,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    bytes: Bytes,
) -> ApiResult {
    let schema = SchemaBody::parse(&bytes)?;
    let st = r.state().await;
    let level = st.level(Some(&subject));
    let history = st.history(&subject);
    let refs: Vec<(u32, &apache_avro::Schema)> =
        history.iter().map(|(v, s)| (*v, s.as_ref())).collect();
    let reasons = crate::registry::compat::check(level, &schema, &refs);
    Ok(ok(CompatibilityAnswer::new(reasons, f.verbose)))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(bytes: &Bytes) -> Result<Level, RegistryError> {
    let b: ConfigBody = body(bytes)?;
    b.compatibility.parse().map_err(|e: String| {
        RegistryError::new(422, 42203, format!("Invalid compatibility level: {e}"))
    })
}

async fn get_global_config(_: Reader, State(r): State<Registry>) -> ApiResult {
    Ok(ok(LevelAnswer {
        compatibility_level: r.state().await.level(None),
    }))
}

async fn put_global_config(_: Admin, State(r): State<Registry>, bytes: Bytes) -> ApiResult {
    let level = parse_level(&bytes)?;
    r.set_level(None, Some(level)).await?;
    Ok(ok(LevelSet {
        compatibility: level,
    }))
}

async fn get_subject_config(
    _: Reader,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let st = r.state().await;
    match st.subject_level(&subject) {
        Some(level) => Ok(ok(LevelAnswer {
            compatibility_level: level,
        })),
        None if f.default_to_global => Ok(ok(LevelAnswer {
            compatibility_level: st.level(None),
        })),
        None => Err(RegistryError::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    _: Admin,
    State(r): State<Registry>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let level = parse_level(&bytes)?;
    r.set_level(Some(&subject), Some(level)).await?;
    Ok(ok(LevelSet {
        compatibility: level,
    }))
}

async fn delete_subject_config(
    _: Admin,
    State(r): State<Registry>,
    Path(subject): Path<String>,
) -> ApiResult {
    let previous = r
        .state()
        .await
        .subject_level(&subject)
        .ok_or_else(|| RegistryError::subject_not_found(&subject))?;
    r.set_level(Some(&subject), None).await?;
    Ok(ok(LevelAnswer {
        compatibility_level: previous,
    }))
}
