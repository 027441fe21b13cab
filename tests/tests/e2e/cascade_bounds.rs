//! What a lower node may do with data it received (issue 29): a province
//! (330000) shares its department's residents with a city (330100), the
//! name masked and the phone hashed; the city cascades them into its own
//! bus and re-shares them to its districts.
//!
//! And when the province's grant forbids sharing on, the city shares
//! nothing on; when it ends, the city's own grants end and the rows it
//! passed on are taken back from its districts (a district's own database,
//! kept by `backflow subscribe`, loses them).
//!
//! Checked on the city: the name masked again stays marked masked in the
//! district's schema; neither the masked name nor the hashed phone can be
//! granted plain (each such share fails alone, with the reason, and the
//! other goes on); the received dataset is the upper node's: no city
//! department may register it, feed it or decide over it, and an admin
//! cannot grant the hashed field as it arrived either.

use std::time::{Duration, Instant};

use backflow_e2e::share_topic;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, unique_name, Node, TestBroker, TestToken, PEOPLE_TABLE};
use serde_json::{json, Value};

const CITY_ADMIN: &str = "bounds-city-admin";
const CITY_GA: &str = "bounds-city-owner-ga";
const CITY_AUDITOR: &str = "bounds-city-auditor";

/// Rows a district's database holds in its table `people`.
async fn district_rows(db: &SinkDb) -> usize {
    db.rows("people", "id", &[("region_code", Kind::Text)])
        .await
        .unwrap()
        .unwrap_or_default()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_passes_on_what_it_received_only_as_protected_as_it_arrived() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(&format!(
            "{PEOPLE_TABLE}
             INSERT INTO people SELECT g, '张三丰', '330106199001010000', '13800001111',
                 CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, 1
               FROM generate_series(1, 20) g;"
        ))
        .await
        .unwrap();
    let province_bus = TestBroker::start();
    let city_bus = TestBroker::start();
    let city_token = TestToken::new("subscriber:330100");
    let province = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330000\"\n[kafka]\nbrokers = \"{}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\n\
             tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n\n\
             [[shares]]\nsubscriber = \"330100\"\ndataset = \"ga.people\"\nregion_column = \"region_code\"\nonward = \"within_jurisdiction\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", phone = \"hashed\", region_code = \"plain\" }}\n\
             secret_env = \"SECRET_330100\"\n{}",
            province_bus.bootstrap(),
            source.name.replace('_', "-"),
            source.name,
            city_token.auth_toml(),
        ),
        &[("SECRET_330100", "hangzhou-secret-0123456789")],
    )
    .unwrap();
    province
        .wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();

    let city = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
             [api_feeds]\nallowed_hosts = [\"127.0.0.1:5432\"]\n\n\
             [[subscriptions]]\nname = \"{}\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"CITY_TOKEN\" }}\n\
             sink = {{ type = \"kafka\" }}\n\
             tables = [{{ topic = \"backflow.share.330100.ga.people\" }}]\n\n\
             [[shares]]\nsubscriber = \"330106\"\ndataset = \"ga.people\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", region_code = \"plain\" }}\n\n\
             [[shares]]\nsubscriber = \"330108\"\ndataset = \"ga.people\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n\n\
             [[shares]]\nsubscriber = \"330110\"\ndataset = \"ga.people\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", phone = \"plain\", region_code = \"plain\" }}\n{}",
            city_bus.bootstrap(),
            unique_name("city-from-province"),
            province_bus.bootstrap(),
            province.url,
            backflow_e2e::tokens_toml(&[
                ("admin", CITY_ADMIN),
                ("owner:ga", CITY_GA),
                ("auditor", CITY_AUDITOR)
            ]),
        ),
        &[("CITY_TOKEN", city_token.token())],
    )
    .unwrap();
    city.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();

    // The name masked again stays masked and says so: in the district's
    // schema and in the values.
    let share_330106 = "backflow.share.330106.ga.people";
    let until = Instant::now() + Duration::from_secs(90);
    while share_topic::high_watermark(city_bus.bootstrap(), share_330106).await < 10 {
        assert!(
            Instant::now() < until,
            "the city never re-shared to 330106\n{}",
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let records = share_topic::read(city_bus.bootstrap(), share_330106, &city.url, CITY_ADMIN)
        .await
        .unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.after().is_some_and(|a| a["name"] == "张**")),
        "{records:#?}"
    );
    let (status, latest) = city
        .api(
            "GET",
            &format!("/subjects/{share_330106}-value/versions/latest"),
            Some(CITY_ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{latest}");
    let schema: Value = serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    let text = schema.to_string();
    assert!(text.contains(r#""backflow.masked":"name""#), "{text}");

    // Neither the masked name nor the hashed phone is granted plain: each of
    // those shares fails alone, with the rule, and the other went on.
    for (subscriber, why) in [
        ("330108", "name arrived masked:name"),
        ("330110", "phone arrived hashed"),
    ] {
        let line = format!(
            "backflow_distributor_share_failures_total{{reason=\"policy\",subscriber=\"{subscriber}\"}} 1"
        );
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, metrics) = city.get_ops("/metrics").await.unwrap();
            if metrics.lines().any(|l| l == line) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{line}\n{metrics}\n{}",
                city.stderr()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let topic = format!("backflow.share.{subscriber}.ga.people");
        assert_eq!(
            share_topic::high_watermark(city_bus.bootstrap(), &topic).await,
            0
        );
        assert!(city.stderr().contains(why), "{why}\n{}", city.stderr());
        let (_, trail) = city
            .api("GET", "/api/audit?limit=1000", Some(CITY_AUDITOR), None)
            .await;
        assert!(
            trail["records"].as_array().unwrap().iter().any(|r| {
                r["details"]["action"] == "subscription failed"
                    && r["details"]["subscription"] == format!("{subscriber}:ga.people")
                    && r["details"]["kind"] == "policy"
            }),
            "{trail}"
        );
    }

    // The received dataset is the province's: the city's department of the
    // same name registers, feeds and decides over none of it.
    let dataset = json!({"sharing": "unconditional", "region_column": "region_code",
        "fields": {"id": {}, "name": {"rule": "masked:name"}, "phone": {"rule": "hashed"}, "region_code": {}}});
    let (status, body) = city
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(CITY_GA),
            Some(dataset.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("upper node"),
        "{body}"
    );
    let (status, body) = city
        .api(
            "PUT",
            "/api/feeds/ga-local",
            Some(CITY_GA),
            Some(
                json!({"type": "postgres", "user": "postgres", "database": source.name,
                "tables": [{"table": "public.people", "dataset": "ga.people"}]}),
            ),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("upper node"),
        "{body}"
    );
    // An admin re-shares it, but grants neither protected field plain.
    let mut plain_phone = dataset.clone();
    plain_phone["fields"]["phone"] = json!({});
    let (status, body) = city
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(CITY_ADMIN),
            Some(plain_phone),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("arrived hashed"),
        "{body}"
    );
    let mut plain_name = dataset.clone();
    plain_name["fields"]["name"] = json!({});
    let (status, body) = city
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(CITY_ADMIN),
            Some(plain_name),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("arrived masked:name"),
        "{body}"
    );
    let (status, body) = city
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(CITY_ADMIN),
            Some(dataset),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The upper grant bounds every onward grant: a city shares on nothing the
/// province did not allow to be shared on, and when the province ends its
/// grant, the city's own grants of the dataset end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_shares_on_only_while_the_upper_grant_allows_it() {
    const PROVINCE_GA: &str = "bounds-province-owner-ga";
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(&format!(
            "{PEOPLE_TABLE}
             INSERT INTO people SELECT g, '张三丰', '330106199001010000', NULL,
                 CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, 1
               FROM generate_series(1, 20) g;"
        ))
        .await
        .unwrap();
    let province_bus = TestBroker::start();
    let city_bus = TestBroker::start();
    let city_token = TestToken::new("subscriber:330100");
    let district_token = TestToken::new("subscriber:330106");
    let province = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330000\"\n[kafka]\nbrokers = \"{}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\n\
             tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n{}{}",
            province_bus.bootstrap(),
            source.name.replace('_', "-"),
            source.name,
            city_token.auth_toml(),
            backflow_e2e::tokens_toml(&[("owner:ga", PROVINCE_GA)]),
        ),
        &[],
    )
    .unwrap();
    province
        .wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    // The province's owner shares with any city, but nothing onward yet.
    let definition = json!({"sharing": "unconditional", "region_column": "region_code",
        "fields": {"id": {}, "name": {"rule": "masked:name"}, "region_code": {}}});
    let (status, body) = province
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(PROVINCE_GA),
            Some(definition),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = province
        .api(
            "POST",
            "/api/subscriptions",
            Some(city_token.token()),
            Some(
                json!({"subscriber": "330100", "dataset": "ga.people", "purpose": "city services",
                "fields": ["id", "name", "region_code"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["onward"], "none", "{body}");

    let city = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\n\
             [[subscriptions]]\nname = \"{}\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"CITY_TOKEN\" }}\n\
             sink = {{ type = \"kafka\" }}\n\
             tables = [{{ topic = \"backflow.share.330100.ga.people\" }}]\n\n\
             [[shares]]\nsubscriber = \"330106\"\ndataset = \"ga.people\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", region_code = \"plain\" }}\n{}",
            city_bus.bootstrap(),
            unique_name("city-from-province"),
            province_bus.bootstrap(),
            province.url,
            backflow_e2e::tokens_toml(&[("admin", CITY_ADMIN), ("auditor", CITY_AUDITOR)]) + &district_token.auth_toml(),
        ),
        &[("CITY_TOKEN", city_token.token())],
    )
    .unwrap();
    city.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(90);
    while share_topic::high_watermark(city_bus.bootstrap(), "backflow.raw.ga.people").await < 20 {
        assert!(
            Instant::now() < until,
            "the cascade never arrived\n{}",
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The city received the rows but shares none of them on: not by its
    // configuration, not through its API.
    let city_def = json!({"sharing": "unconditional", "region_column": "region_code",
        "fields": {"id": {}, "name": {"rule": "masked:name"}, "region_code": {}}});
    let (status, body) = city
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(CITY_ADMIN),
            Some(city_def),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ask = json!({"subscriber": "330108", "dataset": "ga.people", "purpose": "district services",
        "fields": ["id", "name", "region_code"]});
    let (status, body) = city
        .api(
            "POST",
            "/api/subscriptions",
            Some(CITY_ADMIN),
            Some(ask.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("onward"),
        "{body}"
    );

    // The province's owner allows sharing on, within the city's
    // jurisdiction: the city's share delivers (which also shows nothing
    // was held back by anything else before).
    let (status, body) = province
        .api(
            "PATCH",
            "/api/datasets/ga.people",
            Some(PROVINCE_GA),
            Some(json!({"onward": "within_jurisdiction"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let share_330106 = "backflow.share.330106.ga.people";
    let until = Instant::now() + Duration::from_secs(60);
    while share_topic::high_watermark(city_bus.bootstrap(), share_330106).await < 10 {
        assert!(
            Instant::now() < until,
            "the city never shared on\n{}",
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // District 330106 keeps its own database with `backflow subscribe`.
    let district_db = SinkDb::create(Backend::Sqlite).await.unwrap();
    let district = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"{share_330106}\", table = \"people\" }}]\n",
            unique_name("district"),
            city_bus.bootstrap(),
            city.url,
            district_token.upstream_setting(),
            district_db.sink_toml(),
        ),
        &[],
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while district_rows(&district_db).await != 10 {
        assert!(
            Instant::now() < until,
            "the district never held its rows\n{}",
            district.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, body) = city
        .api("POST", "/api/subscriptions", Some(CITY_ADMIN), Some(ask))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active", "{body}");

    // The province's owner sees every node that holds its dataset, at
    // every level, under which grant; the city's catalog says where the
    // dataset comes from.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, tree) = province
            .api(
                "GET",
                "/api/datasets/ga.people/holders",
                Some(PROVINCE_GA),
                None,
            )
            .await;
        assert_eq!(status, 200, "{tree}");
        let mut held: Vec<(String, String)> = tree["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["node"].as_str().unwrap().to_owned(),
                    h["from"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        held.sort();
        let want: Vec<(String, String)> = [
            ("330100", "330000"),
            ("330106", "330100"),
            ("330108", "330100"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        if held == want {
            break;
        }
        assert!(Instant::now() < until, "{tree}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, datasets) = city
        .api("GET", "/api/datasets", Some(CITY_ADMIN), None)
        .await;
    let received = &datasets.as_array().unwrap()[0]["received"];
    assert_eq!(received["upper_grant"]["state"], "active", "{datasets}");
    assert_eq!(
        received["upper_grant"]["onward"], "within_jurisdiction",
        "{datasets}"
    );

    // The province revokes the city: within seconds the city's own grant
    // of the dataset ends, with the reason, on its audit trail.
    let (status, body) = province
        .api(
            "POST",
            "/api/subscriptions/330100:ga.people/revoke",
            Some(PROVINCE_GA),
            Some(json!({"reason": "the agreement ended"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = Instant::now();
    let sub = loop {
        let (_, sub) = city
            .api(
                "GET",
                "/api/subscriptions/330108:ga.people",
                Some(CITY_ADMIN),
                None,
            )
            .await;
        if sub["state"] == "revoked" {
            break sub;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the city's grant outlived the province's: {sub}\n{}",
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reason = sub["reason"].as_str().unwrap();
    assert!(
        reason.contains("upstream grant ended") && reason.contains("the agreement ended"),
        "{reason}"
    );
    // What the city passed on is taken back: each of 330106's rows is
    // deleted in its share topic, and the city's raw copy holds none.
    let live = |records: &[share_topic::Decoded]| {
        let mut rows = std::collections::BTreeMap::new();
        for r in records {
            let id = r.key["id"].as_i64().unwrap_or(-1);
            let alive = r.value.as_ref().is_some_and(|v| v["op"] != "d");
            if alive {
                rows.insert(id, ());
            } else {
                rows.remove(&id);
            }
        }
        rows.len()
    };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let share = share_topic::read(city_bus.bootstrap(), share_330106, &city.url, CITY_ADMIN)
            .await
            .unwrap();
        let raw = share_topic::read(
            city_bus.bootstrap(),
            "backflow.raw.ga.people",
            &city.url,
            CITY_ADMIN,
        )
        .await
        .unwrap();
        if live(&share) == 0 && live(&raw) == 0 && district_rows(&district_db).await == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "rows left: {} in 330106's share, {} in the city's raw copy, {} in the district's database\n{}",
            live(&share),
            live(&raw),
            district_rows(&district_db).await,
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, trail) = city
        .api("GET", "/api/audit?limit=1000", Some(CITY_AUDITOR), None)
        .await;
    assert!(
        trail["records"].as_array().unwrap().iter().any(|r| {
            r["details"]["action"] == "subscription revoked"
                && r["details"]["subscription"] == "330108:ga.people"
                && r["details"]["by"] == "upper grant"
        }),
        "{trail}"
    );
}
