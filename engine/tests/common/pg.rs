//! A fresh Postgres database per test, on the server that
//! `SLUICE_TEST_POSTGRES_URL` names (skipped, saying so, without it).

use sqlx::Connection;

use super::skip;

/// A fresh database on the test server, dropped by the caller.
pub async fn fresh_database() -> Option<(String, String, String)> {
    let admin_url = skip::env_or_skip(
        "SLUICE_TEST_POSTGRES_URL",
        "Postgres ledger test",
        "the URL of a Postgres server, e.g. postgres://postgres@127.0.0.1:5432/postgres",
    )?;
    let name = format!("sluice_test_{}", uuid_like());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to SLUICE_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("the url names a database");
    Some((admin_url.clone(), format!("{base}/{name}"), name))
}

pub async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

pub fn uuid_like() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
