//! Faults a pipeline meets in practice, injected while the department
//! keeps changing rows: the district's database unreachable for 30 s, the
//! broker killed and restarted, the node and the subscriber killed with
//! SIGKILL at random moments, PostgreSQL crashing at the department and at
//! the district. Expected every time: nothing dropped or skipped; once the
//! fault is over the district's table equals the department's, row by row.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow_e2e::pg_server::PgServer;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{
    free_local_addr, metric_sum, pg_connect, unique_name, Node, TestBroker, TestToken,
};

type Table = BTreeMap<i64, Vec<Option<String>>>;

const READ: [(&str, Kind); 2] = [("name", Kind::Text), ("region_code", Kind::Text)];

/// The district's login role: disabling it makes the database refuse the
/// subscriber (and only it) as if it were down.
async fn set_login(role: &str, login: bool) {
    let admin = pg_connect("postgres").await.unwrap();
    let how = if login { "LOGIN" } else { "NOLOGIN" };
    admin
        .batch_execute(&format!("ALTER ROLE {role} {how}"))
        .await
        .unwrap();
    if !login {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap();
    }
}

/// One department transaction of round `round`: a new resident, a name
/// change and a removal.
async fn change(department: &tokio_postgres::Client, round: i64) {
    try_change(department, round).await.unwrap();
}

async fn try_change(
    department: &tokio_postgres::Client,
    round: i64,
) -> Result<(), tokio_postgres::Error> {
    department
        .batch_execute(&format!(
            "INSERT INTO people VALUES ({id}, '新{id}', '330106');
             UPDATE people SET name = name || '+' WHERE id = {upd};
             DELETE FROM people WHERE id = {del};",
            id = 1000 + round,
            upd = 1 + round % 90,
            del = 100 + round,
        ))
        .await
}

async fn until_equal(source: &SinkDb, sink: &SinkDb, deadline: Duration, logs: &[&Node]) {
    let until = Instant::now() + deadline;
    loop {
        let want: Table = source.rows("people", "id", &READ).await.unwrap().unwrap();
        let got = sink.rows("people", "id", &READ).await.unwrap();
        if got.as_ref() == Some(&want) {
            return;
        }
        if Instant::now() > until {
            let got = got.unwrap_or_default();
            let missing: Vec<&i64> = want.keys().filter(|k| !got.contains_key(k)).collect();
            let differ: Vec<&i64> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .map(|(k, _)| k)
                .collect();
            let extra: Vec<&i64> = got.keys().filter(|k| !want.contains_key(k)).collect();
            let tails: Vec<String> = logs.iter().map(|n| log_tail(&n.stderr(), 60)).collect();
            panic!(
                "the district never caught up: {} rows wanted, {} held; missing {:?}, different {:?}, extra {:?} (first 10 of each)\nthe processes' last log lines:\n{}",
                want.len(),
                got.len(),
                &missing[..missing.len().min(10)],
                &differ[..differ.len().min(10)],
                &extra[..extra.len().min(10)],
                tails.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last `n` lines of a log.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Pipeline {
    source: SinkDb,
    sink: SinkDb,
    broker: TestBroker,
    node: Node,
    sub: Node,
    /// The node's configuration and environment (a fixed HTTP port: the
    /// subscriber reads schemas from its registry), to restart it.
    node_config: String,
    node_env: Vec<(String, String)>,
    sub_config: String,
    /// The subscriber's token for the node's registry.
    _reader: TestToken,
}

impl Pipeline {
    fn restart_node(&mut self) {
        let env: Vec<(&str, &str)> = self
            .node_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.node = Node::start_with_config(&self.node_config, &env).unwrap();
    }

    fn restart_sub(&mut self) {
        self.sub = Node::subscribe_with_config(&self.sub_config, &[]).unwrap();
    }
}

/// A department table of 200 rows with its PostgreSQL feed on a node, and
/// a district subscriber applying the raw topic to `sink` as `user`; returns
/// once the district equals the department.
async fn pipeline(sink: SinkDb, user: &str) -> Pipeline {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, '居民' || g, '330106' FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();

    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let reader = TestToken::new("subscriber:330106");
    let node_config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n{}",
        broker.bootstrap(),
        source.name.replace('_', "-"),
        source.name,
        reader.auth_toml(),
    );
    let listen = free_local_addr();
    let node_env = vec![("BACKFLOW_HTTP__LISTEN".to_owned(), listen.clone())];
    let node = Node::start_with_config(&node_config, &[("BACKFLOW_HTTP__LISTEN", listen.as_str())])
        .unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let sub_config = format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\n\
             sink = {{ type = \"postgres\", host = \"127.0.0.1\", port = 5432, user = \"{user}\", database = \"{}\" }}\n\
             tables = [{{ topic = \"backflow.raw.{dataset}\", table = \"people\" }}]\n",
            unique_name("xihu"),
            broker.bootstrap(),
            node.url,
            reader.upstream_setting(),
            sink.name,
    );
    let sub = Node::subscribe_with_config(&sub_config, &[]).unwrap();
    until_equal(&source, &sink, Duration::from_secs(60), &[&sub, &node]).await;
    Pipeline {
        source,
        sink,
        broker,
        node,
        sub,
        node_config,
        node_env,
        sub_config,
        _reader: reader,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_database_down_for_30_seconds_catches_up_and_loses_nothing() {
    let sink = SinkDb::create(Backend::Postgres).await.unwrap();
    let role = unique_name("bf_district");
    pg_connect("postgres")
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {db} OWNER TO {role};",
            db = sink.name
        ))
        .await
        .unwrap();
    let Pipeline {
        source,
        sink,
        broker: _broker,
        node,
        sub,
        ..
    } = pipeline(sink, &role).await;

    // The district's database refuses it for 30 s while the department
    // goes on: inserts, updates, deletes.
    set_login(&role, false).await;
    let department = pg_connect(&source.name).await.unwrap();
    let outage = Instant::now();
    let mut saw_unready = false;
    let mut round = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        change(&department, round).await;
        round += 1;
        if let Ok((status, _)) = sub.get("/readyz").await {
            saw_unready |= status != 200;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(saw_unready, "the subscriber reports the outage on /readyz");
    let (_, metrics) = sub.get_ops("/metrics").await.unwrap();
    assert!(
        metric_sum(&metrics, "backflow_subscribe_errors_total", "") >= 1.0,
        "the failures are counted:\n{metrics}"
    );

    // Back: it catches up, nothing lost.
    set_login(&role, true).await;
    until_equal(&source, &sink, Duration::from_secs(120), &[&sub, &node]).await;
    let held = sink.rows("people", "id", &READ).await.unwrap().unwrap();
    assert!(held.contains_key(&(1000 + round - 1)), "the last insert");
    assert!(!held.contains_key(&100), "the first delete");

    drop(sub);
    sink.drop_db().await.unwrap();
    pg_connect("postgres")
        .await
        .unwrap()
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_stream_loses_nothing() {
    let sink = SinkDb::create(Backend::Postgres).await.unwrap();
    let Pipeline {
        source,
        sink,
        mut broker,
        node,
        sub,
        ..
    } = pipeline(sink, "postgres").await;
    let department = pg_connect(&source.name).await.unwrap();
    for round in 0..40 {
        change(&department, round).await;
        if round == 20 {
            broker.kill_and_restart();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_equal(&source, &sink, Duration::from_secs(120), &[&sub, &node]).await;
    let (status, _) = node.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "the node is ready again:\n{}", node.stderr());
    drop(sub);
    sink.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_subscriber_killed_at_random_moments_lose_nothing() {
    let sink = SinkDb::create(Backend::Postgres).await.unwrap();
    let mut p = pipeline(sink, "postgres").await;
    let department = pg_connect(&p.source.name).await.unwrap();
    // The kill times come from a seed, printed, and given again with
    // BACKFLOW_TEST_SEED to replay a failing run.
    let seed = backflow_e2e::test_seed("kill times");
    let mut rng = fastrand::Rng::with_seed(seed);
    // The department keeps writing, a transaction every 20 ms, through
    // every kill, so a kill lands while changes are on their way.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut round = 0;
            while !stop.is_cancelled() {
                change(&department, round).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            round
        }
    });
    // Kills that landed while a change was on its way.
    let mut mid_stream = 0;
    let marking = pg_connect(&p.source.name).await.unwrap();
    // Six kills, alternating node (feed and distributor) and subscriber,
    // each after a random 0.3-2 s.
    for kill in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..2000))).await;
        // A marker committed just before the kill: still on its way to the
        // district when the kill lands, unless the pipeline beat the kill.
        let marker = 100_000 + kill;
        marking
            .batch_execute(&format!(
                "INSERT INTO people VALUES ({marker}, 'kill {kill}', '330106')"
            ))
            .await
            .unwrap();
        let held = p.sink.rows("people", "id", &READ).await.unwrap();
        if !held.is_some_and(|rows| rows.contains_key(&marker)) {
            mid_stream += 1;
        }
        if kill % 2 == 0 {
            p.node.signal("KILL").unwrap();
            p.node.wait(Duration::from_secs(10)).unwrap();
            p.restart_node();
        } else {
            p.sub.signal("KILL").unwrap();
            p.sub.wait(Duration::from_secs(10)).unwrap();
            p.restart_sub();
        }
    }
    stop.cancel();
    let rounds = writer.await.unwrap();
    println!("{rounds} department transactions during the kills");
    until_equal(
        &p.source,
        &p.sink,
        Duration::from_secs(120),
        &[&p.sub, &p.node],
    )
    .await;
    println!("{mid_stream} of 6 kills landed with a committed change not yet applied");
    assert!(
        mid_stream > 0,
        "no kill landed while changes were on their way (seed {seed}): the test proved nothing"
    );
    let Pipeline { sub, sink, .. } = p;
    drop(sub);
    sink.drop_db().await.unwrap();
}

/// The people table of a private server's database, by id.
async fn server_rows(server: &PgServer, db: &str) -> Option<Table> {
    let client = server.connect(db).await.ok()?;
    let rows = client
        .query(
            "SELECT id, name, region_code::text FROM people ORDER BY id",
            &[],
        )
        .await
        .ok()?;
    Some(
        rows.iter()
            .map(|r| (r.get(0), vec![r.get(1), r.get(2)]))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_at_the_department_and_at_the_district_loses_nothing() {
    // Servers of the test's own: a restart must not cut the other tests.
    let (dept_pg, district_pg) = (PgServer::start().unwrap(), PgServer::start().unwrap());
    dept_pg
        .connect("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE DATABASE gongan")
        .await
        .unwrap();
    dept_pg
        .connect("gongan")
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, '居民' || g, '330106' FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();
    district_pg
        .connect("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE DATABASE xihu")
        .await
        .unwrap();

    let broker = TestBroker::start();
    let reader = TestToken::new("subscriber:330106");
    let node = Node::start_with_config(
        &format!(
            "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"gongan-pg\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\ndatabase = \"gongan\"\ntables = [{{ table = \"public.people\", dataset = \"gongan.people\" }}]\n{}",
            broker.bootstrap(),
            dept_pg.port,
            reader.auth_toml(),
        ),
        &[],
    )
    .unwrap();
    let sub = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"xihu\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\n\
             sink = {{ type = \"postgres\", host = \"127.0.0.1\", port = {}, user = \"postgres\", database = \"xihu\" }}\n\
             tables = [{{ topic = \"backflow.raw.gongan.people\", table = \"people\" }}]\n",
            broker.bootstrap(),
            node.url,
            reader.upstream_setting(),
            district_pg.port,
        ),
        &[],
    )
    .unwrap();

    let until_equal = |deadline: Duration| {
        let (dept_pg, district_pg, node, sub) = (&dept_pg, &district_pg, &node, &sub);
        async move {
            let until = Instant::now() + deadline;
            loop {
                let want = server_rows(dept_pg, "gongan").await;
                let got = server_rows(district_pg, "xihu").await;
                if want.is_some() && got == want {
                    return;
                }
                assert!(
                    Instant::now() < until,
                    "the district never caught up: {} rows wanted, {} held\nnode log:\n{}\nsubscriber log:\n{}",
                    want.map_or(0, |w| w.len()),
                    got.map_or(0, |g| g.len()),
                    node.stderr(),
                    sub.stderr()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    until_equal(Duration::from_secs(60)).await;

    // Changes go on throughout; the department's server crashes at round
    // 15, the district's at round 35 (immediate shutdown: connections cut,
    // WAL recovery on start).
    let mut department = dept_pg.connect("gongan").await.unwrap();
    let mut round = 0;
    let mut failed = 0;
    while round < 50 {
        if round == 15 && failed == 0 {
            dept_pg.restart("immediate").unwrap();
        }
        if round == 35 {
            district_pg.restart("immediate").unwrap();
        }
        match try_change(&department, round).await {
            Ok(()) => round += 1,
            Err(_) => {
                // The department's own application reconnects too.
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(c) = dept_pg.connect("gongan").await {
                    department = c;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed > 0, "the department's crash was felt");
    until_equal(Duration::from_secs(120)).await;
    let (status, _) = node.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "the feed is ready again:\n{}", node.stderr());
    let (status, _) = sub.get("/readyz").await.unwrap();
    assert_eq!(
        status,
        200,
        "the subscriber is ready again:\n{}",
        sub.stderr()
    );
}
