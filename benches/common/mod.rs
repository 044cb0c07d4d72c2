//! What both benchmarks need from MariaDB: the server's URL (the private
//! one the bench's `main` starts when none can be used is handed down in
//! `OVERDUE_TEST_MYSQL_URL`), a fresh database holding the bench's data,
//! and dropping it afterwards.

use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::{self, Data};

const SERVER: &str = "mysql://root@127.0.0.1:3306";

pub fn server_url() -> String {
    std::env::var("OVERDUE_TEST_MYSQL_URL").unwrap_or_else(|_| SERVER.into())
}

/// Database `name`, created anew and filled with `data`; its options.
pub async fn load_database(name: &str, data: &Data) -> mysql_async::Opts {
    let server = mysql_async::Opts::from_url(&server_url()).expect("bad OVERDUE_TEST_MYSQL_URL");
    let mut conn = mysql_async::Conn::new(server.clone())
        .await
        .unwrap_or_else(|e| panic!("MariaDB not reachable at {} ({e})", server_url()));
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .unwrap();
    conn.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap();
    conn.query_drop(format!("USE `{name}`")).await.unwrap();
    demo_data::load(&mut conn, data).await.unwrap();
    conn.disconnect().await.unwrap();
    mysql_async::OptsBuilder::from_opts(server)
        .db_name(Some(name))
        .into()
}

pub async fn drop_db(name: &str) {
    let server = mysql_async::Opts::from_url(&server_url()).unwrap();
    let mut conn = mysql_async::Conn::new(server).await.unwrap();
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

/// The CPU's model name, for the line above each benchmark's table.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}
