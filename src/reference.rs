//! Reference data: per-device tables (`[[reference]]`) that rule expressions read as
//! `name.column`, reloaded while running.
//!
//! In: a CSV file (a header row; `deviceId`, optionally `type`, and numeric
//! columns), a JSON array of objects or NDJSON objects (the same members).
//! Out: [`Table`]s, published through a [`ReferenceSet`]: a reload thread checks each
//! file every `reload` and swaps in a new table when it changed and reads; a file that
//! fails to read keeps the previous table (the error is logged and counted).
//! Partitions take the current tables between blocks (one atomic load when nothing
//! changed), never per event; rules look a device up per closed window.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde_json::Value;

/// One loaded table.
#[derive(Debug, Default)]
pub struct Table {
    pub name: Arc<str>,
    pub columns: Vec<Box<str>>,
    /// Per device: its rows as (type, or "" for every type; row number).
    devices: HashMap<Box<str>, Vec<(Box<str>, usize)>>,
    /// Row after row, `columns.len()` values each (NaN: empty).
    values: Vec<f64>,
    rows: usize,
}

impl Table {
    /// Reads `path` (by its extension: `.csv`, `.json`, else NDJSON).
    pub fn load(name: &str, path: &Path) -> Result<Table, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut b = Builder::new(name);
        match ext.to_ascii_lowercase().as_str() {
            "csv" => b.csv(&text)?,
            "json" => {
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| format!("line {}: {e}", e.line()))?;
                let Value::Array(items) = v else {
                    return Err("a .json reference file holds an array of objects".into());
                };
                for (i, item) in items.iter().enumerate() {
                    b.object(item).map_err(|e| format!("item {}: {e}", i + 1))?;
                }
            }
            _ => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: Value =
                        serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
                    b.object(&v).map_err(|e| format!("line {}: {e}", i + 1))?;
                }
            }
        }
        Ok(b.finish())
    }

    /// The row of `device` for `kind`: the one for its type, else the one for every
    /// type.
    pub fn row(&self, device: &str, kind: &str) -> Option<&[f64]> {
        let rows = self.devices.get(device)?;
        let row = rows
            .iter()
            .find(|(t, _)| **t == *kind)
            .or_else(|| rows.iter().find(|(t, _)| t.is_empty()))?
            .1;
        let width = self.columns.len();
        Some(&self.values[row * width..row * width + width])
    }

    /// Column `column` of the row of `device` for `kind`, if it has a value.
    pub fn value(&self, device: &str, kind: &str, column: &str) -> Option<f64> {
        let c = self.columns.iter().position(|x| **x == *column)?;
        Some(self.row(device, kind)?[c]).filter(|v| !v.is_nan())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Every row: (deviceId, type or "", values).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &[f64])> {
        let width = self.columns.len();
        self.devices.iter().flat_map(move |(d, rows)| {
            rows.iter()
                .map(move |(t, r)| (&**d, &**t, &self.values[r * width..r * width + width]))
        })
    }
}

/// Builds a table row by row.
struct Builder {
    t: Table,
}

impl Builder {
    fn new(name: &str) -> Self {
        Builder {
            t: Table {
                name: Arc::from(name),
                ..Table::default()
            },
        }
    }

    fn column(&mut self, name: &str) -> usize {
        match self.t.columns.iter().position(|c| **c == *name) {
            Some(c) => c,
            None => {
                // A new column: every row so far has no value in it.
                let old = self.t.columns.len();
                let mut values = Vec::with_capacity(self.t.rows * (old + 1));
                for r in 0..self.t.rows {
                    values.extend_from_slice(&self.t.values[r * old..r * old + old]);
                    values.push(f64::NAN);
                }
                self.t.values = values;
                self.t.columns.push(name.into());
                old
            }
        }
    }

    fn row(&mut self, device: &str, kind: &str, cells: &[(usize, f64)]) -> Result<(), String> {
        let rows = self.t.devices.entry(device.into()).or_default();
        if rows.iter().any(|(t, _)| **t == *kind) {
            return Err(format!("device {device:?} (type {kind:?}) is listed twice"));
        }
        rows.push((kind.into(), self.t.rows));
        let width = self.t.columns.len();
        let at = self.t.values.len();
        self.t.values.resize(at + width, f64::NAN);
        for &(c, v) in cells {
            self.t.values[at + c] = v;
        }
        self.t.rows += 1;
        Ok(())
    }

    fn object(&mut self, v: &Value) -> Result<(), String> {
        let Value::Object(o) = v else {
            return Err("not an object".into());
        };
        let device = o
            .get("deviceId")
            .and_then(Value::as_str)
            .ok_or("no deviceId string")?;
        let kind = match o.get("type") {
            None | Some(Value::Null) => "",
            Some(Value::String(t)) => t,
            Some(_) => return Err("type is not a string".into()),
        };
        let mut cells = Vec::new();
        for (k, v) in o {
            if k == "deviceId" || k == "type" {
                continue;
            }
            let x = match v {
                Value::Number(n) => n.as_f64().ok_or_else(|| format!("{k}: not a number"))?,
                Value::Null => continue,
                _ => return Err(format!("{k}: not a number")),
            };
            cells.push((k.as_str(), x));
        }
        let cells: Vec<(usize, f64)> = cells
            .into_iter()
            .map(|(k, x)| (self.column(k), x))
            .collect();
        self.row(device, kind, &cells)
    }

    fn csv(&mut self, text: &str) -> Result<(), String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines
            .next()
            .ok_or("an empty file (a CSV file starts with a header row)")?;
        let header = split_csv(header).map_err(|e| format!("line 1: {e}"))?;
        let device_at = header
            .iter()
            .position(|h| h == "deviceId")
            .ok_or("line 1: no deviceId column")?;
        let type_at = header.iter().position(|h| h == "type");
        let columns: Vec<Option<usize>> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (i != device_at && Some(i) != type_at).then(|| self.column(h)))
            .collect();
        for (n, line) in lines {
            let n = n + 1;
            let cells = split_csv(line).map_err(|e| format!("line {n}: {e}"))?;
            if cells.len() != header.len() {
                return Err(format!(
                    "line {n}: {} fields where the header has {}",
                    cells.len(),
                    header.len()
                ));
            }
            let mut values = Vec::new();
            for (i, cell) in cells.iter().enumerate() {
                let Some(c) = columns[i] else { continue };
                let cell = cell.trim();
                if cell.is_empty() {
                    continue;
                }
                let v: f64 = cell.parse().map_err(|_| {
                    format!("line {n}, column {}: {cell:?} is not a number", header[i])
                })?;
                values.push((c, v));
            }
            let kind = type_at.map_or("", |t| cells[t].as_str());
            self.row(&cells[device_at], kind, &values)
                .map_err(|e| format!("line {n}: {e}"))?;
        }
        Ok(())
    }

    fn finish(self) -> Table {
        self.t
    }
}

/// One CSV record: fields separated by commas, optionally in double quotes (a quote
/// inside doubled).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    let mut started = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if !started => {
                quoted = true;
                started = true;
            }
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, ',') => {
                out.push(std::mem::take(&mut field));
                started = false;
            }
            (_, c) => {
                field.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err("an unterminated quoted field".into());
    }
    out.push(field);
    Ok(out)
}

/// One `[[reference]]`, as loaded.
struct Slot {
    path: PathBuf,
    reload: Duration,
    table: Mutex<Arc<Table>>,
    /// When the file last changed, as read at the last load attempt.
    modified: Mutex<Option<SystemTime>>,
    errors: AtomicU64,
    loads: AtomicU64,
}

/// Every reference table, shared by the partitions, the reload thread and queries.
#[derive(Default)]
pub struct ReferenceSet {
    slots: Vec<Slot>,
    /// Bumped at every table swapped in.
    generation: AtomicU64,
}

/// A reference table's load counters, for `/metrics`.
#[derive(Debug, Clone)]
pub struct ReferenceStats {
    pub name: Arc<str>,
    pub rows: usize,
    pub loads: u64,
    pub errors: u64,
}

impl std::fmt::Debug for ReferenceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.stats()).finish()
    }
}

impl ReferenceSet {
    /// Loads every `[[reference]]` given as (name, path, reload interval): an error
    /// names the one that failed by its place.
    pub fn load<'a>(
        tables: impl IntoIterator<Item = (&'a str, &'a Path, Duration)>,
    ) -> Result<ReferenceSet, (usize, String)> {
        let mut slots = Vec::new();
        for (i, (name, path, reload)) in tables.into_iter().enumerate() {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let table = Table::load(name, path).map_err(|e| (i, e))?;
            slots.push(Slot {
                path: path.to_owned(),
                reload,
                table: Mutex::new(Arc::new(table)),
                modified: Mutex::new(modified),
                errors: AtomicU64::new(0),
                loads: AtomicU64::new(1),
            });
        }
        Ok(ReferenceSet {
            slots,
            generation: AtomicU64::new(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bumped whenever a table is swapped in.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current tables, in `[[reference]]` order.
    pub fn tables(&self) -> Vec<Arc<Table>> {
        self.slots.iter().map(|s| s.table.lock().clone()).collect()
    }

    pub fn stats(&self) -> Vec<ReferenceStats> {
        self.slots
            .iter()
            .map(|s| {
                let t = s.table.lock().clone();
                ReferenceStats {
                    name: t.name.clone(),
                    rows: t.rows(),
                    loads: s.loads.load(Ordering::Relaxed),
                    errors: s.errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Reads slot `i`'s file again if it changed since the last attempt: a table that
    /// reads is swapped in; one that does not keeps the previous table (logged,
    /// counted). Whether a new table was swapped in.
    pub fn reload(&self, i: usize) -> bool {
        let s = &self.slots[i];
        let modified = std::fs::metadata(&s.path).and_then(|m| m.modified()).ok();
        {
            let mut last = s.modified.lock();
            if modified.is_some() && *last == modified {
                return false;
            }
            *last = modified;
        }
        let name = s.table.lock().name.clone();
        match Table::load(&name, &s.path) {
            Ok(t) => {
                tracing::info!(reference = %name, rows = t.rows(), "Reference table reloaded.");
                *s.table.lock() = Arc::new(t);
                s.loads.fetch_add(1, Ordering::Relaxed);
                self.generation.fetch_add(1, Ordering::Release);
                true
            }
            Err(e) => {
                s.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reference = %name, error = %e, "Reference file does not read; the previous table stays.");
                false
            }
        }
    }

    /// Checks every file at its `reload` interval until `stop` is set (then unpark the
    /// thread, so that it ends at once).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        if self.slots.is_empty() {
            return None;
        }
        let set = self.clone();
        std::thread::Builder::new()
            .name("reference".into())
            .spawn(move || {
                let step = Duration::from_millis(20);
                let mut next: Vec<std::time::Instant> = set
                    .slots
                    .iter()
                    .map(|s| std::time::Instant::now() + s.reload)
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let now = std::time::Instant::now();
                    for (i, s) in set.slots.iter().enumerate() {
                        if now >= next[i] {
                            set.reload(i);
                            next[i] = now + s.reload;
                        }
                    }
                    // Woken at once when the run ends (see `pipeline::run_with`).
                    std::thread::park_timeout(step);
                }
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_json_and_ndjson_give_the_same_table() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "l.csv",
            "deviceId,type,co2_max,temp_max\n\"contoso://device-id-1\",CO2,900,\n\"a,b\",,1000.5,30\n",
        );
        let json = write(
            dir.path(),
            "l.json",
            r#"[{"deviceId":"contoso://device-id-1","type":"CO2","co2_max":900},{"deviceId":"a,b","co2_max":1000.5,"temp_max":30}]"#,
        );
        let ndjson = write(
            dir.path(),
            "l.ndjson",
            "{\"deviceId\":\"contoso://device-id-1\",\"type\":\"CO2\",\"co2_max\":900}\n{\"deviceId\":\"a,b\",\"co2_max\":1000.5,\"temp_max\":30}\n",
        );
        for p in [csv, json, ndjson] {
            let t = Table::load("limits", &p).unwrap();
            assert_eq!(
                t.value("contoso://device-id-1", "CO2", "co2_max"),
                Some(900.0),
                "{p:?}"
            );
            assert_eq!(
                t.value("contoso://device-id-1", "TEMP", "co2_max"),
                None,
                "{p:?}"
            );
            assert_eq!(
                t.value("contoso://device-id-1", "CO2", "temp_max"),
                None,
                "{p:?}"
            );
            assert_eq!(t.value("a,b", "TEMP", "temp_max"), Some(30.0), "{p:?}");
            assert_eq!(t.value("a,b", "CO2", "co2_max"), Some(1000.5), "{p:?}");
            assert_eq!(t.value("nobody", "CO2", "co2_max"), None);
            assert_eq!(t.rows(), 2);
        }
    }

    #[test]
    fn a_bad_file_names_the_line_and_keeps_the_previous_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "l.csv", "deviceId,co2_max\nd1,900\n");
        let bad = |text: &str| {
            let q = write(dir.path(), "bad.csv", text);
            Table::load("l", &q).unwrap_err()
        };
        assert!(bad("deviceId,co2_max\nd1,lots\n").contains("line 2"));
        assert!(bad("co2_max\n900\n").contains("no deviceId"));
        assert!(bad("deviceId,co2_max\nd1,1,2\n").contains("line 2"));
        assert!(bad("deviceId,co2_max\nd1,1\nd1,2\n").contains("twice"));

        let set = ReferenceSet::load([("limits", p.as_path(), Duration::from_secs(1))]).unwrap();
        assert_eq!(set.tables()[0].value("d1", "", "co2_max"), Some(900.0));
        // A broken rewrite keeps the old table and counts the error.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, "deviceId,co2_max\nd1,not a number\n").unwrap();
        assert!(!set.reload(0));
        assert_eq!(set.tables()[0].value("d1", "", "co2_max"), Some(900.0));
        assert_eq!(set.stats()[0].errors, 1);
        let generation = set.generation();
        // A good one is swapped in.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, "deviceId,co2_max\nd1,950\nd2,10\n").unwrap();
        assert!(set.reload(0));
        assert_eq!(set.tables()[0].value("d1", "", "co2_max"), Some(950.0));
        assert_eq!(set.generation(), generation + 1);
        assert!(!set.reload(0), "unchanged since");
    }
}
