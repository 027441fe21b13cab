//! Data standards at the source: a feed's rows mapped into their dataset's
//! standard form (`[[standards]]`) and validated before they are published.
//!
//! A change whose row breaks a rule goes to the feed's dead-letter topic
//! with every violated rule named (header [`crate::domain::headers::HEADER_DLQ_RULES`],
//! `field:rule,...`); the feed goes on. Quality is counted per feed,
//! dataset and rule, and scored over [`SCORE_WINDOW`]: the share of the
//! window's changes that met the standard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backflow_connectors::SourceRecord;
use backflow_schemas::standard::{
    builtin, CompiledMapping, FieldMapping, Mapping, Standard, Validator, Violation,
};
use backflow_schemas::{Op, Row, TableDesc};

use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};

/// A dataset's standard form and how its feed's table maps into it.
///
/// ```toml
/// [[standards]]
/// dataset = "gongan.population"
/// standard = "population"              # population | legal_entity | address_point
/// [standards.mapping.fields]
/// id_number = { from = "身份证号", cast = "trim" }
/// name = { from = "姓名" }
/// gender = { from = "性别", codes = { "男" = "1", "女" = "2" } }
/// birth_date = { from = "出生日期", cast = { date = ["%Y%m%d", "%Y-%m-%d"] } }
/// household_region = { from = "户籍区划" }
/// [standards.rules]                    # the dataset's own rules, on top
/// phone = [{ rule = "regex", name = "cn_mobile", pattern = "^1[3-9][0-9]{9}$" }]
/// ```
///
/// Without `mapping.fields`, each standard field is read from the source
/// column of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardConfig {
    /// Dataset id `<department>.<name>`.
    pub dataset: String,
    /// A standard shipped with backflow.
    pub standard: String,
    /// Source column → standard field.
    #[serde(default)]
    pub mapping: backflow_schemas::standard::Mapping,
    /// Rules of this dataset on top of the standard's, by standard field.
    #[serde(default)]
    pub rules: backflow_schemas::standard::DatasetRules,
}

/// The window of the quality score.
pub const SCORE_WINDOW: Duration = Duration::from_secs(300);

/// One dataset's standard, mapping and rules, checked.
pub struct DatasetStandard {
    config: StandardConfig,
    standard: &'static Standard,
    validator: Validator,
    desc: Arc<TableDesc>,
}

impl DatasetStandard {
    /// Checks a `[[standards]]` entry; the error names the entry's key.
    pub fn new(config: &StandardConfig) -> Result<Self, (&'static str, String)> {
        let standard = builtin().get(&config.standard).ok_or_else(|| {
            (
                "standard",
                format!(
                    "unknown standard {:?}; backflow ships {}",
                    config.standard,
                    builtin().keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if let Some(s) = config.mapping.standard.as_ref() {
            if s != &config.standard {
                return Err((
                    "mapping.standard",
                    format!(
                        "the mapping is written for standard {s}, the dataset's is {}",
                        config.standard
                    ),
                ));
            }
        }
        let validator =
            Validator::new(standard, &config.rules).map_err(|e| ("rules", e.to_string()))?;
        let desc = standard.table_desc(&config.dataset);
        desc.validate().map_err(|e| ("dataset", e.to_string()))?;
        Ok(Self {
            config: config.clone(),
            standard,
            validator,
            desc: Arc::new(desc),
        })
    }

    /// The standard's name.
    pub fn name(&self) -> &str {
        self.standard.name()
    }

    /// The dataset's table as published (the standard's form).
    pub fn desc(&self) -> &Arc<TableDesc> {
        &self.desc
    }

    /// Compiles the mapping for one version of the source table; without
    /// declared fields, each standard field comes from the column of the
    /// same name.
    pub fn compile(&self, source: &TableDesc) -> Result<CompiledMapping, String> {
        let mapping = if self.config.mapping.fields.is_empty() {
            Mapping {
                standard: None,
                fields: self
                    .standard
                    .fields()
                    .iter()
                    .filter(|f| source.column(&f.name).is_some())
                    .map(|f| {
                        let m = FieldMapping {
                            from: Some(f.name.clone()),
                            ..FieldMapping::default()
                        };
                        (f.name.clone(), m)
                    })
                    .collect(),
            }
        } else {
            self.config.mapping.clone()
        };
        mapping.compile(source, self.standard).map_err(|e| {
            format!(
                "table {} cannot be mapped into standard {} of dataset {}: {e}",
                source.qualified_name(),
                self.standard.name(),
                self.config.dataset
            )
        })
    }

    /// The standard row of `row` (mapped and validated).
    pub fn conform(&self, mapping: &CompiledMapping, row: &Row) -> Result<Row, Vec<Violation>> {
        mapping.conform(row, &self.validator)
    }
}

/// A change its dataset's standard refused.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The source table (`schema.table`).
    pub table: String,
    /// The change's source position.
    pub position: String,
    /// For the dead letter and the log (rules and fields, never values).
    pub reason: String,
    /// `field:rule,...`.
    pub rules: String,
}

/// Passed/refused counts per second over the score window.
#[derive(Default)]
struct Window {
    buckets: VecDeque<(Instant, u64, u64)>,
    checked: u64,
    refused: u64,
}

impl Window {
    fn add(&mut self, refused: bool) -> f64 {
        let now = Instant::now();
        match self.buckets.back_mut() {
            Some((at, c, r)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *c += 1;
                *r += u64::from(refused);
            }
            _ => self.buckets.push_back((now, 1, u64::from(refused))),
        }
        self.checked += 1;
        self.refused += u64::from(refused);
        while let Some((at, c, r)) = self.buckets.front().copied() {
            if now.duration_since(at) <= SCORE_WINDOW {
                break;
            }
            self.buckets.pop_front();
            self.checked -= c;
            self.refused -= r;
        }
        1.0 - self.refused as f64 / self.checked.max(1) as f64
    }
}

/// One standardised dataset of a feed: its standard, its quality
/// counters (labels resolved once) and score window, and for sources
/// without before-images of their own (polling) the last published row
/// per standard key: the raw topic holds standard rows the source cannot
/// read back, so the before-images come from here.
struct Dataset {
    standard: DatasetStandard,
    checked: prometheus::IntCounter,
    refused: prometheus::IntCounter,
    score: prometheus::Gauge,
    window: Window,
    prior: Option<HashMap<String, Row>>,
}

/// Maps and validates one feed's records.
pub struct Conformer {
    feed: String,
    datasets: HashMap<String, Dataset>,
    /// Compiled mapping per source table version (by address; the `Arc`
    /// keeps the address from being reused).
    compiled: HashMap<usize, (Arc<TableDesc>, Arc<CompiledMapping>)>,
    metrics: Metrics,
}

impl Conformer {
    /// The conformer of feed `feed` for the node's `[[standards]]` (checked
    /// when the configuration was loaded).
    pub fn new(feed: &str, configs: &[StandardConfig], metrics: Metrics) -> Result<Self, String> {
        let mut datasets = HashMap::new();
        for c in configs {
            let standard = DatasetStandard::new(c).map_err(|(key, reason)| {
                format!("standard of dataset {}: {key}: {reason}", c.dataset)
            })?;
            let labels = [feed, c.dataset.as_str()];
            let dataset = Dataset {
                standard,
                checked: metrics.quality_checked.with_label_values(&labels),
                refused: metrics.quality_refused.with_label_values(&labels),
                score: metrics.quality_score.with_label_values(&labels),
                window: Window::default(),
                prior: None,
            };
            datasets.insert(c.dataset.clone(), dataset);
        }
        Ok(Self {
            feed: feed.to_owned(),
            datasets,
            compiled: HashMap::new(),
            metrics,
        })
    }

    /// The published form of `dataset` when it has a standard.
    pub fn standard_desc(&self, dataset: &str) -> Option<Arc<TableDesc>> {
        self.datasets
            .get(dataset)
            .map(|d| d.standard.desc().clone())
    }

    /// Hands over the rows the raw topic of a standardised `dataset` holds
    /// (its standard form), for a source that gives no before-images:
    /// updates then carry the row they replace, so the distributor can take
    /// a row away from a district it moved out of.
    pub fn load_prior(&mut self, dataset: &str, rows: Vec<Row>) {
        let Some(d) = self.datasets.get_mut(dataset) else {
            return;
        };
        let desc = d.standard.desc();
        d.prior = Some(rows.into_iter().map(|r| (prior_key(desc, &r), r)).collect());
    }

    /// Whether `dataset` has a standard.
    pub fn has_standard(&self, dataset: &str) -> bool {
        self.datasets.contains_key(dataset)
    }

    /// Checks the tables a source captures before anything is published:
    /// a table of a standardised dataset must map into its standard, any
    /// other must be publishable as it is (Avro names).
    pub fn check_tables(&mut self, tables: &[Arc<TableDesc>]) -> Result<(), String> {
        for t in tables {
            if self.datasets.contains_key(&t.dataset) {
                self.mapping(t)?;
            } else {
                t.validate().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn mapping(&mut self, table: &Arc<TableDesc>) -> Result<Arc<CompiledMapping>, String> {
        let id = Arc::as_ptr(table) as usize;
        if let Some((_, m)) = self.compiled.get(&id) {
            return Ok(m.clone());
        }
        let standard = &self.datasets[&table.dataset].standard;
        let m = Arc::new(standard.compile(table)?);
        tracing::info!(feed = %self.feed, table = %table.qualified_name(), dataset = %table.dataset, standard = standard.name(), "table mapped into its dataset's standard");
        self.compiled.insert(id, (table.clone(), m.clone()));
        Ok(m)
    }

    /// Adds the record to `out` in its dataset's standard form (unchanged
    /// when the dataset has no standard), or says why the standard refuses
    /// it. An update that changes the standard's key (an ID number
    /// corrected at the source) becomes a delete of the old key and an
    /// insert of the new one.
    pub fn conform(
        &mut self,
        mut record: SourceRecord,
        out: &mut Vec<SourceRecord>,
    ) -> Result<(), Refused> {
        if !self.datasets.contains_key(&record.table.dataset) {
            out.push(record);
            return Ok(());
        }
        let refused = |record: &SourceRecord, reason: String, rules: String| Refused {
            table: record.table.qualified_name(),
            position: record.position.as_str().to_owned(),
            reason,
            rules,
        };
        let mapping = self
            .mapping(&record.table)
            .map_err(|reason| refused(&record, reason, "mapping".to_owned()))?;
        let d = self
            .datasets
            .get_mut(&record.table.dataset)
            .expect("checked above");
        let event = &mut record.event;
        let mut violations = Vec::new();
        if let Some(after) = &event.after {
            match d.standard.conform(&mapping, after) {
                Ok(row) => event.after = Some(row),
                Err(v) => violations = v,
            }
        }
        if violations.is_empty() {
            if let Some(before) = &event.before {
                // The old row is only mapped: it was judged when written.
                // An update's old row that does not map (it was refused
                // then) is left out; a delete needs it for its key.
                match mapping.apply(before) {
                    Ok(row) => event.before = Some(row),
                    Err(_) if event.op != Op::Delete => event.before = None,
                    Err(v) => violations = v,
                }
            }
        }
        d.checked.inc();
        d.score.set(d.window.add(!violations.is_empty()));
        if violations.is_empty() {
            let desc = d.standard.desc().clone();
            record.table = desc.clone();
            let event = &mut record.event;
            if let Some(row) = event.after.as_ref().or(event.before.as_ref()) {
                // Keyed by the standard's key from now on.
                event.key = desc.key_of(row);
            }
            if let (Some(prior), None) = (&d.prior, &event.before) {
                if let Some(old) = event
                    .after
                    .as_ref()
                    .and_then(|a| prior.get(&prior_key(&desc, a)))
                {
                    // The topic has the row: this is an update of it.
                    event.before = Some(old.clone());
                    if matches!(event.op, Op::Create | Op::Read) {
                        event.op = Op::Update;
                    }
                }
            }
            let first = out.len();
            let old_key = match (&event.op, &event.before) {
                (Op::Update, Some(b)) => Some(desc.key_of(b)).filter(|k| *k != event.key),
                _ => None,
            };
            match old_key {
                Some(old_key) => {
                    let mut gone = record.clone();
                    gone.event.op = Op::Delete;
                    gone.event.after = None;
                    gone.event.key = old_key;
                    record.event.op = Op::Create;
                    record.event.before = None;
                    out.push(gone);
                    out.push(record);
                }
                None => out.push(record),
            }
            if let Some(prior) = &mut d.prior {
                for r in &out[first..] {
                    let e = &r.event;
                    match (&e.op, &e.after, &e.before) {
                        (Op::Delete, _, Some(b)) | (_, None, Some(b)) => {
                            prior.remove(&prior_key(&desc, b));
                        }
                        (_, Some(a), _) => {
                            prior.insert(prior_key(&desc, a), a.clone());
                        }
                        _ => {}
                    }
                }
            }
            return Ok(());
        }
        d.refused.inc();
        let dataset = &record.table.dataset;
        for v in &violations {
            self.metrics
                .quality_violations
                .with_label_values(&[&self.feed, dataset, &v.field, &v.rule])
                .inc();
        }
        let reason = format!(
            "dataset {dataset} standard {}: {}",
            d.standard.name(),
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(refused(&record, reason, Violation::summary(&violations)))
    }
}

/// Subject under which the registry holds a standard's own schema (with
/// its documentation and backflow attributes).
pub fn standard_subject(standard: &str) -> String {
    format!("backflow.standard.{standard}")
}

/// Registers the schema of every standard the node's datasets use, so the
/// registry holds each standard (documentation, required fields,
/// sensitivity and rules per field) beside the topics' schemas.
pub async fn register(registry: &crate::registry::Registry, configs: &[StandardConfig]) {
    let mut done = std::collections::BTreeSet::new();
    for c in configs {
        let Some(standard) = builtin().get(&c.standard) else {
            continue;
        };
        if !done.insert(c.standard.clone()) {
            continue;
        }
        let subject = standard_subject(&c.standard);
        let result = match crate::registry::Registry::parse(standard.avsc()) {
            Ok(schema) => registry.register(&subject, &schema).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(id) => tracing::info!(%subject, id, "standard schema registered"),
            Err(e) => tracing::warn!(%subject, error = %e, "cannot register a standard's schema"),
        }
    }
}

/// Quality of one feed's dataset, as `/api/quality` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Quality {
    /// Feed.
    pub feed: String,
    /// Dataset.
    pub dataset: String,
    /// Changes checked since the node started.
    pub checked: u64,
    /// Changes refused since the node started.
    pub refused: u64,
    /// Violations by `field:rule`.
    pub violations: std::collections::BTreeMap<String, u64>,
    /// Share of the last window's changes that met the standard.
    pub score: f64,
}

/// The quality counters of `metrics`, per feed and dataset.
pub fn quality_report(metrics: &Metrics) -> Vec<Quality> {
    use prometheus::core::Collector;
    let mut out: std::collections::BTreeMap<(String, String), Quality> = Default::default();
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let mut each =
        |c: &dyn Collector, f: &mut dyn FnMut(&mut Quality, &prometheus::proto::Metric)| {
            for family in c.collect() {
                for m in family.get_metric() {
                    let key = (label(m, "feed"), label(m, "dataset"));
                    let q = out.entry(key.clone()).or_insert_with(|| Quality {
                        feed: key.0,
                        dataset: key.1,
                        score: 1.0,
                        ..Quality::default()
                    });
                    f(q, m);
                }
            }
        };
    each(&metrics.quality_checked, &mut |q, m| {
        q.checked = m.get_counter().get_value() as u64
    });
    each(&metrics.quality_refused, &mut |q, m| {
        q.refused = m.get_counter().get_value() as u64
    });
    each(&metrics.quality_violations, &mut |q, m| {
        q.violations.insert(
            format!("{}:{}", label(m, "field"), label(m, "rule")),
            m.get_counter().get_value() as u64,
        );
    });
    each(&metrics.quality_score, &mut |q, m| {
        q.score = m.get_gauge().get_value()
    });
    out.into_values().collect()
}

/// A standard row's key as a map key (the standard's key columns).
fn prior_key(desc: &TableDesc, row: &Row) -> String {
    format!("{:?}", desc.key_of(row).0)
}

/// What `backflow feed check` found in one table's sample.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableCheck {
    /// The source table.
    pub table: String,
    /// Its dataset.
    pub dataset: String,
    /// The dataset's standard, if it has one.
    pub standard: Option<String>,
    /// Why no row can be published (the mapping does not compile, or a
    /// table without a standard has names Avro cannot carry).
    pub problem: Option<String>,
    /// Rows read.
    pub rows: usize,
    /// Rows that would be published.
    pub passing: usize,
    /// Rows the feed cannot read (a value that does not convert).
    pub unreadable: usize,
    /// Rows the standard refuses.
    pub refused: usize,
    /// Violations by `field:rule`: how many, and up to three examples
    /// (the rule's reason and the row's key, redacted).
    pub by_rule: std::collections::BTreeMap<String, (usize, Vec<String>)>,
}

/// A value shown in a report: its first and last characters, the rest
/// masked.
fn redact(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    match chars.len() {
        0..=2 => "*".repeat(chars.len()),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

/// Runs the mapping and rules over up to `sample` rows of each table of
/// `feed` (a feed's tables read as a polling feed reads them: see
/// [`crate::source::config::FeedConfig::sample_config`]) without publishing
/// anything (`backflow feed check`).
pub async fn check_feed(
    feed: &backflow_connectors::poll::PollSourceConfig,
    standards: &[StandardConfig],
    sample: usize,
) -> Result<Vec<TableCheck>, String> {
    let samples = backflow_connectors::poll::sample(feed, sample)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (desc, rows) in samples {
        let mut check = TableCheck {
            table: desc.qualified_name(),
            dataset: desc.dataset.clone(),
            rows: rows.len(),
            ..TableCheck::default()
        };
        let standard = match standards.iter().find(|s| s.dataset == desc.dataset) {
            Some(c) => Some(DatasetStandard::new(c).map_err(|(k, r)| format!("{k}: {r}"))?),
            None => None,
        };
        let mapping = match &standard {
            Some(s) => {
                check.standard = Some(s.name().to_owned());
                match s.compile(&desc) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        check.problem = Some(e);
                        out.push(check);
                        continue;
                    }
                }
            }
            None => {
                if let Err(e) = desc.validate() {
                    check.problem = Some(e.to_string());
                    out.push(check);
                    continue;
                }
                None
            }
        };
        for row in rows {
            let row = match row {
                Ok(r) => r,
                Err(_) => {
                    check.unreadable += 1;
                    continue;
                }
            };
            let (Some(s), Some(m)) = (&standard, &mapping) else {
                check.passing += 1;
                continue;
            };
            match s.conform(m, &row) {
                Ok(_) => check.passing += 1,
                Err(violations) => {
                    check.refused += 1;
                    let key = desc
                        .key_of(&row)
                        .0
                        .iter()
                        .map(|d| match d {
                            backflow_schemas::Datum::Text(t) => redact(t),
                            backflow_schemas::Datum::Long(v) => redact(&v.to_string()),
                            backflow_schemas::Datum::Int(v) => redact(&v.to_string()),
                            other => redact(&format!("{other:?}")),
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    for v in violations {
                        let entry = check
                            .by_rule
                            .entry(format!("{}:{}", v.field, v.rule))
                            .or_default();
                        entry.0 += 1;
                        if entry.1.len() < 3 {
                            entry.1.push(format!("{} (row key {key})", v.reason));
                        }
                    }
                }
            }
        }
        out.push(check);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_show_values_redacted() {
        assert_eq!(redact("330106198001010012"), "3****************2");
        assert_eq!(redact("张三"), "**");
        assert_eq!(redact("王小明"), "王*明");
    }

    #[test]
    fn the_score_is_the_share_of_changes_that_met_the_standard() {
        let mut w = Window::default();
        let scores: Vec<f64> = [false, true, false, false]
            .into_iter()
            .map(|refused| w.add(refused))
            .collect();
        for (got, want) in scores.iter().zip([1.0, 0.5, 2.0 / 3.0, 0.75]) {
            assert!((got - want).abs() < 1e-12, "{scores:?}");
        }
    }

    #[test]
    fn an_unknown_standard_is_refused_with_the_ones_shipped() {
        let c = StandardConfig {
            dataset: "gongan.population".into(),
            standard: "census".into(),
            mapping: Mapping::default(),
            rules: Default::default(),
        };
        let (key, reason) = DatasetStandard::new(&c).err().unwrap();
        assert_eq!(key, "standard");
        assert!(reason.contains("population"), "{reason}");
    }
}
