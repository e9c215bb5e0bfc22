//! The PostgreSQL wire protocol (pgwire through `datafusion-postgres`), so `psql`,
//! Grafana and other PostgreSQL clients can query the tables.
//!
//! `datafusion-postgres` supplies the simple and extended query protocols and the
//! `pg_catalog` that clients query on connect (`\d`, Grafana's schema browser).
//! eventide wraps its query handlers to enforce the query timeout and row limit on
//! every statement, and adds MD5 password authentication when a password is set.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::pgwire;
use futures::{Sink, StreamExt};
use pgwire::api::auth::md5pass::{Md5PasswordAuthStartupHandler, hash_md5_password};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::{Engine, Limits};

/// Serves PostgreSQL clients on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    user: String,
    password: Option<String>,
) {
    let handlers = Arc::new(Handlers {
        service: Arc::new(Service {
            inner: Arc::new(DfSessionService::new(engine.ctx.clone())),
            limits: engine.limits,
        }),
        auth: password.map(|password| Arc::new(Secret { user, password })),
    });
    loop {
        match listener.accept().await {
            Ok((socket, addr)) => {
                let handlers = handlers.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!(%addr, error = %e, "PostgreSQL connection ended with an error.");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr` (so a busy port fails at start-up).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

struct Handlers {
    service: Arc<Service>,
    auth: Option<Arc<Secret>>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the MD5 handler keeps the connection's salted hash.
        Arc::new(match &self.auth {
            Some(secret) => Startup::Password(Md5PasswordAuthStartupHandler::new(
                secret.clone(),
                Arc::new(DefaultServerParameterProvider::default()),
            )),
            None => Startup::Open(Open),
        })
    }
}

enum Startup {
    Open(Open),
    Password(Md5PasswordAuthStartupHandler<Secret, DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(h) => h.on_startup(client, message).await,
            Startup::Password(h) => h.on_startup(client, message).await,
        }
    }
}

/// No authentication (loopback, no password configured).
struct Open;

impl NoopStartupHandler for Open {}

/// The configured user and password.
#[derive(Debug)]
struct Secret {
    user: String,
    password: String,
}

#[async_trait]
impl AuthSource for Secret {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let salt = salt();
        let user = login.user().unwrap_or("");
        let hash = if user == self.user {
            hash_md5_password(user, &self.password, &salt)
        } else {
            // An unknown user gets a hash no password matches.
            format!("md5-no-such-user-{}", xxhash_rust::xxh3::xxh3_64(&salt))
        };
        Ok(Password::new(Some(salt.to_vec()), hash.into_bytes()))
    }
}

fn salt() -> [u8; 4] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let h = xxhash_rust::xxh3::xxh3_64(&[t.to_le_bytes(), n.to_le_bytes()].concat());
    (h as u32).to_le_bytes()
}

/// `DfSessionService` with eventide's limits on every statement.
struct Service {
    inner: Arc<DfSessionService>,
    limits: Limits,
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

fn timeout_error(limits: Limits) -> PgWireError {
    user_error(
        "57014", // query_canceled
        format!(
            "canceling statement: it ran longer than the query timeout ({:?}; [server] query_timeout)",
            limits.timeout
        ),
    )
}

/// Applies the deadline and the row limit to a response's row stream.
fn limited(response: Response, deadline: tokio::time::Instant, limits: Limits) -> Response {
    let Response::Query(mut q) = response else {
        return response;
    };
    let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
    let stream = futures::stream::unfold(
        (rows, 0u64, false),
        move |(mut rows, n, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline, rows.next()).await {
                Err(_) => Some((Err(timeout_error(limits)), (rows, n, true))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(e), (rows, n, true))),
                Ok(Some(Ok(_))) if n >= limits.max_rows => Some((
                    Err(user_error(
                        "54000", // program_limit_exceeded
                        format!(
                            "query result has more than {} rows ([server] max_rows): add a LIMIT or an aggregate",
                            limits.max_rows
                        ),
                    )),
                    (rows, n, true),
                )),
                Ok(Some(Ok(row))) => Some((Ok(row), (rows, n + 1, false))),
            }
        },
    );
    q.data_rows = Box::pin(stream);
    Response::Query(q)
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let responses = tokio::time::timeout_at(
            deadline,
            SimpleQueryHandler::do_query(&*self.inner, client, query),
        )
        .await
        .map_err(|_| timeout_error(self.limits))??;
        Ok(responses
            .into_iter()
            .map(|r| limited(r, deadline, self.limits))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let response = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows),
        )
        .await
        .map_err(|_| timeout_error(self.limits))??;
        Ok(limited(response, deadline, self.limits))
    }
}
