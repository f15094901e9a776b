//! `hub.traefik.io/v1alpha1`: Uplink and the API management kinds, with every field of the
//! upstream CRDs. Fields atrium does not implement yet are typed [`NotSupported`].

use std::collections::BTreeMap;

use atrium_routing::middleware::config::NotSupported;
use serde::{Deserialize, Serialize};

use super::meta::{LabelSelector, NameRef};
use super::traefik::{HealthCheck, Object, PassiveHealthCheck};

/// `Uplink.spec`: a child cluster exposes its routers to the parent under `exposeName`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct UplinkSpec {
    #[serde(default)]
    pub expose_name: Option<String>,
    #[serde(default)]
    pub entry_points: Vec<String>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub passive_health_check: Option<PassiveHealthCheck>,
}

/// CORS settings of an API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Cors {
    #[serde(default)]
    pub add_vary_header: Option<bool>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_headers_list: Vec<String>,
    #[serde(default)]
    pub allow_methods_list: Vec<String>,
    #[serde(default)]
    pub allow_origin_list_regex: Vec<String>,
    #[serde(default)]
    pub allow_origins_list: Vec<String>,
    #[serde(default)]
    pub expose_headers_list: Vec<String>,
    #[serde(default)]
    pub max_age: Option<i64>,
}

/// Where an API's OpenAPI document comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OpenApiSpec {
    #[serde(default)]
    pub url: Option<String>,
    /// A path served by the API's own backend. On a parent cluster it cannot be fetched.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub refresh_interval: Option<String>,
    #[serde(default)]
    pub r#override: Option<OpenApiOverride>,
    #[serde(default)]
    pub operation_sets: Vec<OperationSet>,
    #[serde(default)]
    pub validate_request_body_schema: Option<NotSupported>,
    #[serde(default)]
    pub validate_request_method_and_path: Option<bool>,
}

/// `openApiSpec.override`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenApiOverride {
    /// Replacement `servers`.
    pub servers: Vec<ServerUrl>,
}

/// A server URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerUrl {
    /// The URL.
    pub url: String,
}

/// A named set of operations, for catalog operation filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSet {
    /// Name referenced by `operationFilter.include`.
    pub name: String,
    /// Matchers.
    pub matchers: Vec<OperationMatcher>,
}

/// Matches operations by method and path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OperationMatcher {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
}

/// `API.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiSpec {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub open_api_spec: Option<OpenApiSpec>,
    #[serde(default)]
    pub cors: Option<Cors>,
    #[serde(default)]
    pub versions: Vec<NameRef>,
}

/// `APIVersion.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiVersionSpec {
    pub release: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub open_api_spec: Option<OpenApiSpec>,
    #[serde(default)]
    pub cors: Option<Cors>,
}

/// Whose requests a plan limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Bucket {
    /// One counter per subscription (the default).
    #[default]
    #[serde(rename = "subscription")]
    Subscription,
    /// One counter per application.
    #[serde(rename = "application")]
    Application,
    /// One counter per application and API.
    #[serde(rename = "application-api")]
    ApplicationApi,
}

/// A rate limit or quota of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PlanLimit {
    pub limit: i64,
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub bucket: Option<Bucket>,
}

/// `APIPlan.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiPlanSpec {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<PlanLimit>,
    #[serde(default)]
    pub quota: Option<PlanLimit>,
}

/// `APIBundle.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiBundleSpec {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub apis: Vec<NameRef>,
    #[serde(default)]
    pub api_selector: Option<LabelSelector>,
}

/// Operation filter of a catalog item or subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationFilter {
    /// Names of operation sets.
    #[serde(default)]
    pub include: Vec<String>,
}

/// `APICatalogItem.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiCatalogItemSpec {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub everyone: Option<bool>,
    #[serde(default)]
    pub apis: Vec<NameRef>,
    #[serde(default)]
    pub api_bundles: Vec<NameRef>,
    #[serde(default)]
    pub api_selector: Option<LabelSelector>,
    #[serde(default)]
    pub api_plan: Option<NameRef>,
    #[serde(default)]
    pub operation_filter: Option<OperationFilter>,
}

/// `APIPortal.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiPortalSpec {
    pub trusted_urls: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub auth: Option<NameRef>,
    #[serde(default)]
    pub ui: Option<PortalUi>,
}

/// Portal look.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalUi {
    #[serde(default)]
    pub logo_url: Option<String>,
}

/// `APIPortalAuth.spec`: how portal users sign in: OpenID Connect, or (not built) LDAP.
/// Without an APIPortalAuth, the portal's own local accounts sign in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ApiPortalAuthSpec {
    #[serde(default)]
    pub oidc: Option<PortalOidc>,
    /// Not built: read and compiled to an error.
    #[serde(default)]
    pub ldap: Option<serde_json::Value>,
}

/// `APIPortalAuth.spec.oidc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalOidc {
    pub issuer_url: String,
    /// A Secret with `clientId` and `clientSecret`.
    pub secret_name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: Option<PortalOidcClaims>,
    #[serde(default)]
    pub client_config: Option<PortalOidcClientConfig>,
    #[serde(default)]
    pub synced_attributes: Vec<String>,
}

/// Which ID-token claims carry the user's attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalOidcClaims {
    #[serde(default)]
    pub groups: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub firstname: Option<String>,
    #[serde(default)]
    pub lastname: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub organization_name: Option<String>,
}

/// How the control plane talks to the OIDC provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalOidcClientConfig {
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub tls: Option<PortalOidcTls>,
}

/// TLS towards the OIDC provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalOidcTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// `APIAuth.spec`: how API consumers authenticate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiAuthSpec {
    pub is_default: bool,
    #[serde(default)]
    pub api_key: Option<ApiKeyAuth>,
    #[serde(default)]
    pub jwt: Option<JwtAuth>,
    /// Not built: read (so the APIAuth still stands for its namespace) and compiled to an
    /// error, its APIs answering 401.
    #[serde(default)]
    pub ldap: Option<serde_json::Value>,
}

/// JWT authentication: where the keys that sign tokens come from (exactly one of
/// `signingSecretName`, `publicKey`, `jwksFile`, `jwksUrl`, `trustedIssuers`), and which
/// claim names the caller's application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct JwtAuth {
    pub app_id_claim: String,
    #[serde(default)]
    pub signing_secret_name: Option<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub trusted_issuers: Option<Vec<TrustedIssuer>>,
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub strip_authorization_header: Option<bool>,
    #[serde(default)]
    pub token_query_key: Option<String>,
    #[serde(default)]
    pub token_name_claim: Option<NotSupported>,
    #[serde(default)]
    pub client_config: Option<JwtClientConfig>,
}

/// A JWKS URL, and the issuer its tokens must name (none: any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct TrustedIssuer {
    #[serde(default)]
    pub issuer: Option<String>,
    pub jwks_url: String,
}

/// How JWKS are fetched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct JwtClientConfig {
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub tls: Option<JwtClientTls>,
}

/// The TLS of JWKS fetches: a CA bundle (PEM) to trust.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct JwtClientTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// API-key authentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ApiKeyAuth {
    #[serde(default)]
    pub key_source: Option<KeySource>,
}

/// Where the API key is read from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct KeySource {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub header_auth_scheme: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// `ContentItem.spec`: a documentation page in the portal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ContentItemSpec {
    pub title: String,
    pub order: i64,
    pub parent_ref: ContentParentRef,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub link: Option<ContentLink>,
}

/// What a content item belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ContentParentRef {
    pub kind: ContentParentKind,
    pub name: String,
}

/// Kinds a content item can hang under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ContentParentKind {
    #[serde(rename = "APIPortal")]
    ApiPortal,
    #[serde(rename = "API")]
    Api,
    #[serde(rename = "APIBundle")]
    ApiBundle,
}

/// An external link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentLink {
    /// Target URL.
    pub href: String,
}

/// `ManagedApplication.spec`: an application declared in manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ManagedApplicationSpec {
    pub app_id: String,
    pub owner: String,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<ManagedApiKey>,
}

/// An API key of a managed application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ManagedApiKey {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub secret_name: Option<String>,
    #[serde(default)]
    pub suspended: Option<bool>,
}

/// `ManagedSubscription.spec`: a subscription declared in manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ManagedSubscriptionSpec {
    pub api_plan: NameRef,
    #[serde(default)]
    pub apis: Vec<NameRef>,
    #[serde(default)]
    pub api_bundles: Vec<NameRef>,
    #[serde(default)]
    pub api_selector: Option<LabelSelector>,
    #[serde(default)]
    pub applications: Vec<AppIdRef>,
    #[serde(default)]
    pub managed_applications: Vec<NameRef>,
    #[serde(default)]
    pub managed_application_selector: Option<LabelSelector>,
    #[serde(default)]
    pub claims: Option<String>,
    #[serde(default)]
    pub operation_filter: Option<OperationFilter>,
    #[serde(default)]
    pub weight: Option<i64>,
}

/// An application by its appId.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppIdRef {
    /// The application's id.
    pub app_id: String,
}

/// Helper for label maps in resources.
pub type Labels = BTreeMap<String, String>;

#[allow(missing_docs)]
pub type Uplink = Object<UplinkSpec>;
#[allow(missing_docs)]
pub type Api = Object<ApiSpec>;
#[allow(missing_docs)]
pub type ApiVersion = Object<ApiVersionSpec>;
#[allow(missing_docs)]
pub type ApiPlan = Object<ApiPlanSpec>;
#[allow(missing_docs)]
pub type ApiBundle = Object<ApiBundleSpec>;
#[allow(missing_docs)]
pub type ApiCatalogItem = Object<ApiCatalogItemSpec>;
#[allow(missing_docs)]
pub type ApiPortal = Object<ApiPortalSpec>;
#[allow(missing_docs)]
pub type ApiPortalAuth = Object<ApiPortalAuthSpec>;
#[allow(missing_docs)]
pub type ApiAuth = Object<ApiAuthSpec>;
#[allow(missing_docs)]
pub type ContentItem = Object<ContentItemSpec>;
#[allow(missing_docs)]
pub type ManagedApplication = Object<ManagedApplicationSpec>;
#[allow(missing_docs)]
pub type ManagedSubscription = Object<ManagedSubscriptionSpec>;
