//! The five tables, each a view of the [`Hub`] taken when a query scans it, and the
//! read-only catalog around them.
//!
//! | table | rows | from |
//! |---|---|---|
//! | `live_windows` | windows not yet closed, partial aggregates | partition snapshots |
//! | `windows` | closed windows, for `[server] retention` | the sink thread |
//! | `alerts` | alert state changes, for `retention` | the sink thread |
//! | `devices` | one per device | partition snapshots |
//! | `stats` | one per partition: the accounting, watermark, lag | partition snapshots |

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::object_store::ObjectStore;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use super::Hub;
use crate::event::window_schema;
use crate::live::{alerts_schema, devices_schema, stats_batch, stats_schema};

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    LiveWindows,
    Windows,
    Alerts,
    Devices,
    Stats,
    Reference,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::LiveWindows,
        Table::Windows,
        Table::Alerts,
        Table::Devices,
        Table::Stats,
        Table::Reference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::LiveWindows => "live_windows",
            Table::Windows => "windows",
            Table::Alerts => "alerts",
            Table::Devices => "devices",
            Table::Stats => "stats",
            Table::Reference => "reference",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Table::LiveWindows | Table::Windows => window_schema(),
            Table::Alerts => alerts_schema(),
            Table::Devices => devices_schema(),
            Table::Stats => stats_schema(),
            Table::Reference => crate::live::reference_schema(),
        }
    }

    /// The table's rows now.
    pub fn batches(self, hub: &Hub) -> Vec<RecordBatch> {
        match self {
            Table::LiveWindows => hub.snapshots().iter().map(|s| s.live.clone()).collect(),
            Table::Devices => hub.snapshots().iter().map(|s| s.devices.clone()).collect(),
            Table::Stats => vec![stats_batch(&hub.snapshots())],
            Table::Windows => hub.closed_windows(),
            Table::Alerts => hub.alerts(),
            Table::Reference => vec![hub.reference_batch()],
        }
    }
}

/// A table of the pipeline's state.
#[derive(Debug)]
struct StateTable {
    table: Table,
    hub: Arc<Hub>,
}

#[async_trait]
impl TableProvider for StateTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Each partition's snapshot is one DataFusion partition: scanned in parallel.
        let partitions: Vec<Vec<RecordBatch>> = self
            .table
            .batches(&self.hub)
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| vec![b])
            .collect();
        let partitions = if partitions.is_empty() {
            vec![vec![]]
        } else {
            partitions
        };
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            self.schema(),
            projection.cloned(),
        )?)
    }
}

/// Registers the tables in the default schema.
pub fn register(ctx: &SessionContext, hub: &Arc<Hub>) -> Result<()> {
    for table in Table::ALL {
        ctx.register_table(
            table.name(),
            Arc::new(StateTable {
                table,
                hub: hub.clone(),
            }),
        )?;
    }
    Ok(())
}

/// Makes the default catalog read-only: no CREATE TABLE / VIEW / SCHEMA, no DROP.
pub fn seal(ctx: &SessionContext) {
    let catalogs = ctx.state().catalog_list().clone();
    for name in catalogs.catalog_names() {
        if let Some(inner) = catalogs.catalog(&name) {
            catalogs.register_catalog(name, Arc::new(ReadOnlyCatalog(inner)));
        }
    }
}

#[derive(Debug)]
struct ReadOnlyCatalog(Arc<dyn CatalogProvider>);

impl CatalogProvider for ReadOnlyCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.0.schema_names()
    }
    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.0
            .schema(name)
            .map(|s| Arc::new(ReadOnlySchema(s)) as Arc<dyn SchemaProvider>)
    }
    fn register_schema(
        &self,
        _name: &str,
        _schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        Err(read_only())
    }
}

#[derive(Debug)]
struct ReadOnlySchema(Arc<dyn SchemaProvider>);

#[async_trait]
impl SchemaProvider for ReadOnlySchema {
    fn table_names(&self) -> Vec<String> {
        self.0.table_names()
    }
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.0.table(name).await
    }
    fn table_exist(&self, name: &str) -> bool {
        self.0.table_exist(name)
    }
    fn register_table(
        &self,
        _name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only())
    }
    fn deregister_table(&self, _name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only())
    }
}

fn read_only() -> DataFusionError {
    DataFusionError::Plan(
        "eventide's catalog is read-only: tables cannot be created or dropped".into(),
    )
}

/// An object store registry with no stores: SQL cannot read or write files
/// (`CREATE EXTERNAL TABLE`, `COPY ... TO`).
#[derive(Debug)]
pub struct NoObjectStores;

impl datafusion::execution::object_store::ObjectStoreRegistry for NoObjectStores {
    fn register_store(
        &self,
        _url: &url::Url,
        _store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &url::Url) -> Result<Arc<dyn ObjectStore>> {
        Err(DataFusionError::Plan(format!(
            "eventide does not read or write files from SQL ({url})"
        )))
    }
}
