//! `backflow demo`, as the README's first command runs it: 20 seconds of
//! province → city → districts in one process, then Ctrl-C. Each district
//! database must hold only its own residents, masked and hashed as the
//! policies say; the dashboards answer while it runs, and the sign-in
//! link printed for each role signs in as that role; it stops cleanly.

use std::process::Stdio;
use std::time::{Duration, Instant};

/// GETs `path` of the node a printed sign-in link (`<base>/#token=<t>`)
/// points to, with the link's token.
async fn signed_in_get(link: &str, path: &str) -> serde_json::Value {
    let (base, token) = link.split_once("/#token=").expect("token in the address");
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fills_each_district_with_only_its_own_residents_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = backflow_e2e::backflow()
        .args(["demo", "--port", "0", "--rate", "20", "--dir"])
        .arg(dir.path().join("demo"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    };

    // It says where the dashboards are, and they answer.
    let until = Instant::now() + Duration::from_secs(60);
    let dashboards: Vec<String> = loop {
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let urls: Vec<String> = out
            .lines()
            .filter_map(|l| l.split("dashboard ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if urls.len() == 2 {
            break urls;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "demo exited:\n{}",
            logs()
        );
        assert!(Instant::now() < until, "no dashboard address:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for url in &dashboards {
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert!(resp.text().await.unwrap().contains("<html"), "{url}");
        // The printed address carries a token the node accepts, so the
        // dashboard can read the API.
        let (base, token) = url.split_once("/#token=").expect("token in the address");
        let lag = reqwest::Client::new()
            .get(format!("{base}/api/lag"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(lag.status(), 200, "{url}");
    }

    // The city knows its place: the province above, the districts it
    // shares with below (from its configuration's shares).
    let node = signed_in_get(&dashboards[1], "/api/node").await;
    assert_eq!(node["code"], "330100", "{node}");
    assert_eq!(node["parent"], "330000", "{node}");
    assert_eq!(
        node["children"],
        serde_json::json!(["330106", "330108"]),
        "{node}"
    );

    // A sign-in link per role: each token stands for the principal it is
    // printed beside.
    let out = std::fs::read_to_string(&out_path).unwrap();
    let links: Vec<(String, String)> = out
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut words| Some((words.next()?.to_owned(), words.next()?.to_owned())))
        .filter(|(who, url)| {
            (who.starts_with("owner:") || who.starts_with("subscriber:"))
                && url.contains("/#token=")
        })
        .collect();
    let principals: Vec<&str> = links.iter().map(|(who, _)| who.as_str()).collect();
    assert_eq!(
        principals,
        ["owner:gongan", "subscriber:330106", "subscriber:330108"],
        "{}",
        logs()
    );
    for (who, url) in &links {
        let me = signed_in_get(url, "/api/whoami").await;
        assert_eq!(me["principal"], who.as_str(), "{url}");
    }

    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "demo exited:\n{}",
        logs()
    );
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        out.contains("330106: ") && out.contains(" rows, latest "),
        "a progress line shows what the districts hold:\n{}",
        logs()
    );

    // Ctrl-C: a clean stop.
    assert!(std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "demo did not stop on Ctrl-C:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", logs());
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("demo stopped"));

    let department =
        rusqlite::Connection::open(dir.path().join("demo/province-gongan.db")).unwrap();
    let registered: i64 = department
        .query_row("SELECT count(*) FROM people", [], |r| r.get(0))
        .unwrap();
    assert!(registered > 300, "the generator registered people");
    for code in ["330106", "330108"] {
        let db = rusqlite::Connection::open(dir.path().join(format!("demo/district-{code}.db")))
            .unwrap();
        let mut stmt = db
            .prepare("SELECT id, name, id_number, phone, region_code FROM people")
            .unwrap();
        let rows: Vec<(i64, String, String, String, String)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // About a fifth of 300+ residents live in each district.
        assert!(rows.len() > 30, "district {code} holds {} rows", rows.len());
        for (id, name, id_number, phone, region) in &rows {
            assert_eq!(region, code, "resident {id} is not of district {code}");
            let chars: Vec<char> = name.chars().collect();
            assert!(
                chars.len() >= 2 && chars[1..].iter().all(|c| *c == '*'),
                "name masked: {name}"
            );
            assert!(
                id_number.len() == 18 && &id_number[6..14] == "********",
                "identity number masked: {id_number}"
            );
            assert!(
                phone.len() == 64 && phone.bytes().all(|b| b.is_ascii_hexdigit()),
                "phone hashed: {phone}"
            );
        }
        let columns: Vec<String> = db
            .prepare("SELECT name FROM pragma_table_info('people')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!columns.iter().any(|c| c == "income"), "{columns:?}");
        // A resident still in the district at the department, unchanged for
        // a while, is there.
        let settled: Vec<i64> = department
            .prepare(
                "SELECT id FROM people WHERE region_code = ?1 AND updated_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-15 seconds')",
            )
            .unwrap()
            .query_map([code], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let held: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
        let missing: Vec<&i64> = settled.iter().filter(|id| !held.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "district {code} lacks settled residents {missing:?}"
        );
    }
}
