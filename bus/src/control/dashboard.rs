//! The operator dashboard: one page served by the node at `/` (every
//! subscription, feed, dataset and the node's place in the hierarchy) and
//! `/subscription?subscriber=..&dataset=..` (one subscription's lag over the
//! last hour).
//!
//! The page is a static HTML + JavaScript application embedded in the binary
//! (`dashboard.html`: inline CSS, inline script, charts drawn as inline SVG;
//! nothing is fetched from the internet) that reads the node's JSON API
//! (`/api/node`, `/api/lag`, `/api/lag/history`, `/api/subscriptions`,
//! `/api/datasets`, `/api/feeds`) every 2 s with the operator's bearer token.
//! The token comes from the URL fragment (`/#token=...`, never sent to the
//! server and removed from the address bar at once) or a sign-in box, and is
//! kept in the tab's `sessionStorage`. The page itself needs no token: it
//! holds no data.
//!
//! Every data row carries `data-*` attributes (`data-kind`, `data-subscriber`,
//! `data-dataset`, `data-status`, cells with `data-field` and `data-value`)
//! so tests and scripts can read what the page shows.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page (overview and subscription views: the script picks by path).
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
