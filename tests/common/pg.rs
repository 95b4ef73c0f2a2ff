//! A PostgreSQL schema of its own for each test of `indexing-server --store`, with a
//! role of its own (so a test can cut its servers off from the database without
//! touching anyone else's), both dropped when the test ends.
//!
//! The database is `PEERDEX_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without one, a store test prints one
//! line saying it is skipped, unless `PEERDEX_REQUIRE_POSTGRES=1` (as `.ci/run` sets),
//! where a missing server is a failure.

use std::sync::atomic::{AtomicU32, Ordering};

/// The database the store tests use.
pub fn admin_url() -> String {
    std::env::var("PEERDEX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema and role; dropped with everything in them.
pub struct Schema {
    /// The schema's (and the role's) name.
    pub name: String,
    /// What `--store` takes to use it: the role, and the schema first in the search path.
    pub url: String,
}

impl Schema {
    /// A fresh schema, or `None` (saying so once on stderr) if there is no PostgreSQL
    /// and it is not required. `test` names the test, for the skip line.
    pub fn new(test: &str) -> Option<Schema> {
        let mut admin = match postgres::Client::connect(&admin_url(), postgres::NoTls) {
            Ok(client) => client,
            Err(e) if std::env::var_os("PEERDEX_REQUIRE_POSTGRES").is_some_and(|v| v == "1") => {
                panic!(
                    "PostgreSQL is required (PEERDEX_REQUIRE_POSTGRES=1) but {} cannot be reached: {e}",
                    admin_url()
                )
            }
            Err(e) => {
                eprintln!("skipped {test}: no PostgreSQL at {} ({e})", admin_url());
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("peerdex_t{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), rand_suffix());
        // The extension once for every schema, in public, under the servers' own
        // migration lock (two tests creating it at once would collide).
        admin
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(31636683776877944);
                 CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public; COMMIT;
                 CREATE ROLE {name} LOGIN; CREATE SCHEMA {name} AUTHORIZATION {name};"
            ))
            .expect("create the test's schema and role");
        // The same server and database, as the test's role.
        let admin = admin_url();
        let after_scheme = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
        let rest = after_scheme.split_once('@').map_or(after_scheme, |(_, host)| host);
        let url =
            format!("postgres://{name}@{rest}?options=-csearch_path%3D{name},public&application_name={name}");
        Some(Schema { name, url })
    }

    /// Runs `sql` (one statement) as the administrator, in the schema (to look into
    /// it, or cut its role off).
    pub fn admin(&self, sql: &str) -> Vec<postgres::Row> {
        let mut admin =
            postgres::Client::connect(&admin_url(), postgres::NoTls).expect("connect as the administrator");
        admin.batch_execute(&format!("SET search_path = {}, public", self.name)).unwrap();
        if sql.contains(';') {
            // Several statements: no rows to give back.
            admin
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {:?}", e.as_db_error().map(|d| d.message())));
            return Vec::new();
        }
        admin.query(sql, &[]).unwrap_or_else(|e| match e.as_db_error() {
            Some(db) => panic!("{sql}: {}", db.message()),
            None => panic!("{sql}: {e}"),
        })
    }

    /// Cuts this schema's role off the database: no new connection, and the open ones
    /// closed. `restore` lets it in again.
    pub fn cut_off(&self) {
        let name = &self.name;
        self.admin(&format!("ALTER ROLE {name} NOLOGIN"));
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
        ));
    }

    /// Lets this schema's role connect again.
    pub fn restore(&self) {
        self.admin(&format!("ALTER ROLE {} LOGIN", self.name));
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = &self.name;
        if let Ok(mut admin) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "ALTER ROLE {name} NOLOGIN;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}';
                 DROP SCHEMA IF EXISTS {name} CASCADE; DROP ROLE IF EXISTS {name};"
            ));
        }
    }
}

/// A few random letters, so that two runs at once never share a name.
fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    format!("{:08x}", h.finish() as u32)
}
