//! The node's web workbench: one page served at `/` (tabs 运行概览
//! overview, 数据目录 catalog, 申请 request, 审批 decide) and
//! `/subscription?subscriber=..&dataset=..` (one subscription's lag over the
//! last hour).
//!
//! The page is a static HTML + JavaScript application embedded in the binary
//! (`dashboard.html`: inline CSS, inline script, charts drawn as inline SVG;
//! nothing is fetched from anywhere but the node's own API) that reads and
//! calls the node's JSON API with the user's bearer token. The token comes
//! from the URL fragment (`/#token=...`, never sent to the server and removed
//! from the address bar at once) or a sign-in box, and is kept in the tab's
//! `sessionStorage`. The page itself needs no token: it holds no data.
//!
//! - Who is signed in comes from `GET /api/whoami` (admin, owner:<dept>,
//!   subscriber:<node>); only the tabs that principal may use are shown
//!   (admin and owners: overview, catalog, decide; subscribers: catalog,
//!   request). The API still decides every call: a refusal is shown where
//!   the action was taken, with the API's status and `reason`.
//! - 运行概览: hierarchy, lag of every subscription, pending approvals,
//!   feeds, data quality, datasets (`/api/node`, `/api/lag`,
//!   `/api/subscriptions`, `/api/datasets`, `/api/feeds`, `/api/quality`),
//!   re-read every 2 s.
//! - 数据目录: every dataset with its owner, description, sharing class,
//!   row rule (region column), each field with the rule it is shared under
//!   (as is, masked, hashed), and how many nodes subscribe; a search box.
//! - 申请 (a subscriber): a dataset, the fields (each showing how it
//!   arrives), purpose and validity, sent as `POST /api/subscriptions`; the
//!   subscriber's requests with their state and the reason of a rejection
//!   or revocation.
//! - 审批 (an owner, an admin): pending requests with purpose, requested
//!   fields and the requesting node; approve the reviewed
//!   `request_version` with the ticked fields (unticking narrows), reject
//!   or revoke with a reason; the decided ones with their reasons.
//!   The workbench tabs are read when opened and after each action, so a
//!   form being filled in is never redrawn under the user.
//!
//! Every string comes from one dictionary per language (Simplified Chinese
//! by default, English by the switch in the header or `#lang=en`; the
//! choice is kept in `localStorage`); dates and times are shown in
//! Asia/Shanghai whatever the browser's zone, numbers with the language's
//! grouping, and the font stack falls back to the system's CJK fonts.
//!
//! Every data row carries `data-*` attributes (`data-kind`, `data-subscriber`,
//! `data-dataset`, `data-status`, `data-state`, cells with `data-field` and
//! `data-value`) so tests and scripts can read what the page shows.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page (workbench and subscription views: the script picks by path).
pub const PAGE: &str = include_str!("dashboard.html");

/// What the page may load and talk to: itself and the node's API only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: `/` and `/subscription`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/subscription", get(page))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's inline script.
    fn script() -> &'static str {
        let start = PAGE.find("<script>").expect("inline script") + "<script>".len();
        let end = PAGE.rfind("</script>").expect("script end");
        &PAGE[start..end]
    }

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        // The only absolute URL is the SVG namespace, which is a name, not a fetch.
        let without_ns = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in [
            "http://", "https://", "//cdn", "src=", "@import", "url(", "<link",
        ] {
            assert!(
                !without_ns.contains(needle),
                "the dashboard must not load {needle}… (no internet on site)"
            );
        }
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
    }

    #[test]
    fn page_calls_the_api_with_a_bearer_token_and_shows_errors() {
        let js = script();
        for endpoint in [
            "/api/node",
            "/api/lag",
            "/api/lag/history?subscriber=",
            "/api/subscriptions",
            "/api/datasets",
            "/api/feeds",
            "/api/whoami",
            "/api/quality",
        ] {
            assert!(js.contains(endpoint), "the page reads {endpoint}");
        }
        assert!(js.contains("\"Authorization\": \"Bearer \" + token"));
        assert!(js.contains("sessionStorage"));
        assert!(js.contains("REFRESH_MS = 2000"));
        assert!(PAGE.contains("id=\"banner\" role=\"alert\""));
        // Data from the API goes into the page as text, never as markup.
        assert!(!js.contains("innerHTML"));
        assert!(!js.contains("document.write"));
    }

    #[test]
    fn rows_carry_the_attributes_tests_read() {
        let js = script();
        for attr in [
            "\"data-kind\": \"subscription\"",
            "\"data-kind\": \"pending\"",
            "\"data-kind\": \"feed\"",
            "\"data-kind\": \"dataset\"",
            "\"data-kind\": \"child\"",
            "\"data-kind\": \"self\"",
            "\"data-subscriber\"",
            "\"data-dataset\"",
            "\"data-status\"",
            "cell(\"lag_messages\"",
            "cell(\"lag_seconds\"",
            "cell(\"lag_bytes\"",
        ] {
            assert!(js.contains(attr), "{attr} missing from the page's script");
        }
    }

    /// The dictionaries of the inline script: language → key → text.
    fn dictionaries() -> serde_json::Map<String, serde_json::Value> {
        let js = script();
        let start = js.find("/*i18n*/").expect("dictionary start") + "/*i18n*/".len();
        let end = js.find("/*end i18n*/").expect("dictionary end");
        match serde_json::from_str(&js[start..end]).expect("the dictionaries are JSON") {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// The keys a text names at `prefix"key"` (e.g. `t("key"`, not
    /// `split("`).
    fn keys_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.match_indices(prefix)
            .filter(|(i, _)| {
                text[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
            })
            .filter_map(|(i, _)| {
                let rest = &text[i + prefix.len()..];
                let end = rest.find('"')?;
                Some(&rest[..end])
            })
            .collect()
    }

    #[test]
    fn every_string_comes_from_a_dictionary_in_both_languages() {
        let dicts = dictionaries();
        let keys = |lang: &str| -> std::collections::BTreeSet<String> {
            dicts[lang]
                .as_object()
                .unwrap_or_else(|| panic!("no {lang} dictionary"))
                .keys()
                .cloned()
                .collect()
        };
        let (zh, en) = (keys("zh-CN"), keys("en"));
        assert_eq!(dicts.len(), 2, "two languages");
        assert_eq!(
            zh.symmetric_difference(&en).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "both dictionaries have the same keys"
        );
        let mut named: Vec<&str> = keys_after(script(), "t(\"");
        for attr in [
            "data-i18n=\"",
            "data-i18n-placeholder=\"",
            "data-i18n-label=\"",
        ] {
            named.extend(keys_after(PAGE, attr));
        }
        assert!(named.len() > 150, "{} keys named", named.len());
        for key in named {
            // `t("state." + s)`: some key under that prefix.
            let known = match key.strip_suffix('.') {
                Some(_) => en.iter().any(|k| k.starts_with(key)),
                None => en.contains(key),
            };
            assert!(known, "{key} is used but in no dictionary");
        }
        // Simplified Chinese by default, remembered across visits.
        let js = script();
        assert!(js.contains("var lang = \"zh-CN\""));
        assert!(js.contains("localStorage.setItem(LANG_KEY"));
        assert!(PAGE.starts_with("<!doctype html>\n<html lang=\"zh-CN\">"));
        // Dates in Beijing time, numbers with the language's grouping.
        assert!(js.contains("var TZ = \"Asia/Shanghai\""));
        assert!(js.contains("new Intl.NumberFormat(lang)"));
        assert!(
            !js.contains("getHours()"),
            "no clock read in the browser's zone"
        );
        // The fonts fall back to the system's CJK fonts.
        for font in [
            "\"PingFang SC\"",
            "\"Microsoft YaHei\"",
            "\"Noto Sans CJK SC\"",
        ] {
            assert!(PAGE.contains(font), "{font} in the font stack");
        }
    }

    #[test]
    fn the_workbench_calls_the_decisions_the_api_offers() {
        let js = script();
        for needle in [
            "call(\"POST\", \"/api/subscriptions\"",
            "\"/api/subscriptions/\" + encodeURIComponent(s.id) + \"/\" + action",
            "body.request_version = s.request_version",
            "\"data-kind\": \"decision\"",
            "\"data-kind\": \"granted\"",
            "\"data-kind\": \"decided\"",
            "\"data-kind\": \"my-request\"",
            "\"data-kind\": \"catalog-dataset\"",
            "\"data-kind\": \"catalog-field\"",
            "\"data-kind\": \"request-field\"",
            "\"data-reason\", error.reason",
        ] {
            assert!(
                js.contains(needle),
                "{needle} missing from the page's script"
            );
        }
    }

    #[tokio::test]
    async fn router_serves_the_page_at_both_paths_with_a_strict_policy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router = router();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        for path in [
            "/",
            "/subscription?subscriber=330106&dataset=gongan.population",
        ] {
            let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "text/html; charset=utf-8"
            );
            let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(csp.contains("connect-src 'self'"), "{csp}");
            assert!(csp.contains("default-src 'none'"), "{csp}");
            assert_eq!(resp.text().await.unwrap(), PAGE);
        }
        let resp = reqwest::get(format!("http://{addr}/nothing"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        server.abort();
    }
}
