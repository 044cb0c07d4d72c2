//! Configuration (README "Configuration"): built-in defaults < TOML file < environment.
//!
//! Environment variables are `OVERDUE_<SECTION>__<KEY>` (for example
//! `OVERDUE_CAMPAIGN__MAX_ATTEMPTS=5`), and the seed script's
//! `ASTERISK_USERNAME`, `ASTERISK_PASSWORD`, `MYSQL_SERVER`, `MYSQL_USER`,
//! `MYSQL_PASSWORD` and `MYSQL_DATABASE` keep working (below `OVERDUE_*`).
//! Unknown keys are errors: a typo must not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveTime;
use chrono_tz::Tz;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

use crate::rules::script::{Action, OnMachine};
use crate::rules::selection::Policy;
pub use crate::rules::selection::RetryMinutes;
use crate::rules::window::CallingWindow;

/// Where the daemon looks for its file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/overdue-dialer/config.toml";

/// The seed script's variables and the key each one sets.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("ASTERISK_USERNAME", "ari.username"),
    ("ASTERISK_PASSWORD", "ari.password"),
    ("MYSQL_SERVER", "mysql.host"),
    ("MYSQL_USER", "mysql.user"),
    ("MYSQL_PASSWORD", "mysql.password"),
    ("MYSQL_DATABASE", "mysql.database"),
    ("OPENAI_API_KEY", "voice_agent.api_key"),
];

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// A password or API key: never printed, not even in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Environment values like `MYSQL_PASSWORD=1234` arrive as numbers; a
/// password or a user name is text whatever it looks like.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// `campaign.schedule.0` → `campaign.schedule[0]` in a figment key path.
fn indexed(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '.' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('[');
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                out.push(d);
                chars.next();
            }
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// A local time of day written `"HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime(pub NaiveTime);

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map(LocalTime)
            .map_err(|_| {
                serde::de::Error::custom(format!("expected a time like \"08:00\", found {s:?}"))
            })
    }
}

fn time_zone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an IANA time zone like \"America/Bogota\", found {s:?}"
        ))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Time zone for the cutoff rule, the calling window and every timestamp written.
    #[serde(deserialize_with = "time_zone")]
    pub timezone: Tz,
    pub mysql: MysqlConfig,
    pub ari: AriConfig,
    pub campaign: CampaignConfig,
    /// Minutes to wait before retrying, per outcome.
    pub retry_minutes: RetryMinutes,
    pub window: CallingWindow,
    pub trunks: Vec<TrunkConfig>,
    pub voice_agent: VoiceAgentConfig,
    /// Where a caller goes to reach a person (keypad `transfer`, the
    /// agent's `transferir_a_asesor`).
    pub transfer: TransferConfig,
    /// The keypad menu after the reminder (README "The callee talks back").
    pub menu: MenuConfig,
    /// Answering-machine detection on outbound calls.
    pub amd: AmdConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timezone: chrono_tz::America::Bogota,
            mysql: MysqlConfig::default(),
            ari: AriConfig::default(),
            campaign: CampaignConfig::default(),
            retry_minutes: RetryMinutes::default(),
            window: CallingWindow::default(),
            trunks: vec![TrunkConfig::default()],
            voice_agent: VoiceAgentConfig::default(),
            transfer: TransferConfig::default(),
            menu: MenuConfig::default(),
            amd: AmdConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub user: String,
    pub password: Secret,
    #[serde(deserialize_with = "lenient_string")]
    pub database: String,
    /// Connections kept open to MySQL.
    pub max_connections: usize,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            host: "127.0.0.1".into(),
            port: 3306,
            user: "root".into(),
            password: Secret::default(),
            database: String::new(),
            max_connections: 10,
        }
    }
}

impl MysqlConfig {
    /// Connection options built field by field, so a password with `@` or
    /// `/` in it needs no URL escaping and never ends up in a URL string.
    pub fn opts(&self) -> mysql_async::Opts {
        let pool =
            mysql_async::PoolConstraints::new(1, self.max_connections.max(1)).unwrap_or_default();
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.expose().to_owned()).filter(|p| !p.is_empty()))
            .db_name(Some(self.database.clone()).filter(|d| !d.is_empty()))
            .pool_opts(
                mysql_async::PoolOpts::default()
                    .with_constraints(pool)
                    // With mysql_async's default TTL of zero the pool keeps
                    // only `min` (1) idle connections and closes the rest as
                    // they come back: under load nearly every query opened a
                    // new connection (1,049 logins for 500 calls). Idle
                    // connections now stay up to `max` and shrink to `min`
                    // after a minute of quiet.
                    .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
                    // No COM_RESET_CONNECTION when a connection goes back:
                    // it empties the prepared-statement cache, so every
                    // query was prepared anew (an extra round trip). The
                    // daemon keeps no session state to clear, and an
                    // unfinished transaction is still rolled back by the pool.
                    .with_reset_connection(false),
            )
            .into()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AriConfig {
    /// Base URL of Asterisk's HTTP server, without `/ari`.
    #[serde(deserialize_with = "lenient_string")]
    pub url: String,
    #[serde(deserialize_with = "lenient_string")]
    pub username: String,
    pub password: Secret,
    /// Stasis application for outbound reminder calls.
    pub outbound_app: String,
    /// Stasis application for inbound calls (the voice agent).
    pub inbound_app: String,
    /// Seconds to wait for one REST answer from Asterisk.
    pub request_timeout_secs: u64,
}

impl Default for AriConfig {
    fn default() -> Self {
        AriConfig {
            url: "http://127.0.0.1:8088".into(),
            username: "asterisk".into(),
            password: Secret::default(),
            outbound_app: "overdue-app".into(),
            inbound_app: "openai-app".into(),
            request_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignConfig {
    /// Dial attempts per client before giving up (README "Schema").
    pub max_attempts: u32,
    /// Days after a delivered reminder before the same client may be called again (README "Who is called").
    pub min_days_between_contacts: u32,
    pub max_concurrent_calls: u32,
    pub calls_per_second: f64,
    /// Passed to Asterisk as the originate timeout.
    pub ring_timeout_secs: u64,
    /// From originate; when it fires the daemon hangs up itself.
    pub call_timeout_secs: u64,
    /// Global pass timeout = base + per_client × selected clients.
    pub run_timeout_base_secs: u64,
    pub run_timeout_per_client_secs: u64,
    /// What the callee hears, in order (`sound:…`, `number:{saldo}`, …).
    pub media: Vec<String>,
    /// Language for the prompt; channels created by ARI default to `en`.
    pub lang: String,
    /// Local times (`"HH:MM"`) at which `run` starts a pass, parsed here,
    /// once, when the configuration is read.
    pub schedule: Vec<LocalTime>,
    /// Seconds between passes inside the calling window, for retries and new flags.
    pub poll_interval_secs: u64,
    /// First cool-down of a failing trunk; it doubles while the trunk keeps failing.
    pub trunk_cooldown_secs: u64,
    /// On SIGTERM, how long calls in flight may finish before they are hung up.
    pub shutdown_grace_secs: u64,
    /// Another host's claim without an outcome is closed once this old
    /// (this host's own are closed at once: see `campaign::reconcile`).
    pub orphan_after_mins: u64,
    /// A callee who hangs up during the prompt was reached only after
    /// hearing this much of it (delivered means heard).
    pub min_heard_secs: u64,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        CampaignConfig {
            max_attempts: 3,
            min_days_between_contacts: 7,
            max_concurrent_calls: 10,
            calls_per_second: 5.0,
            ring_timeout_secs: 30,
            call_timeout_secs: 90,
            run_timeout_base_secs: 300,
            run_timeout_per_client_secs: 300,
            media: vec!["sound:morosos_natalia".into()],
            lang: "es_MX".into(),
            schedule: vec![LocalTime(NaiveTime::MIN + chrono::Duration::hours(8))],
            poll_interval_secs: 900,
            trunk_cooldown_secs: 60,
            shutdown_grace_secs: 60,
            orphan_after_mins: 30,
            min_heard_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    pub name: String,
    /// ARI endpoint with `{number}` for the 10 national digits,
    /// e.g. `PJSIP/{number}@voip_issabel` or `Local/{number}@from-voip`.
    pub endpoint: String,
    pub max_channels: u32,
    /// 1 is tried first.
    pub priority: u32,
    pub caller_id: Option<String>,
    /// The Asterisk endpoint this trunk depends on (`PJSIP/voip_issabel`):
    /// while Asterisk says it is `offline` the trunk takes no calls.
    /// Absent: implied by `endpoint` (`PJSIP/…@x`, `SIP/x/…`); `""`: none.
    pub health_endpoint: Option<String>,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            name: "from-voip".into(),
            endpoint: "Local/{number}@from-voip".into(),
            max_channels: 10,
            priority: 1,
            caller_id: None,
            health_endpoint: None,
        }
    }
}

impl TrunkConfig {
    /// The endpoint whose state gates this trunk, if any
    /// (`rules::trunks::health_endpoint`).
    pub fn health_endpoint(&self) -> Option<String> {
        crate::rules::trunks::health_endpoint(self.health_endpoint.as_deref(), &self.endpoint)
    }
}

/// The Prometheus endpoint (README "Metrics").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on; empty turns metrics off.
    pub listen: String,
    /// Serve on an address other than loopback. Off by default: the
    /// figures say how many debtors were called and reached, which is the
    /// ISP's business; a scraper on another host should come through a
    /// proxy or an SSH tunnel, or this must be set on purpose.
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
            allow_remote: false,
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, `None` when metrics are off.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        let l = self.listen.trim();
        if l.is_empty() {
            return None;
        }
        l.parse().ok()
    }
}

/// Inbound calls on the inbound app (README "The voice agent").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceAgentConfig {
    /// The Realtime endpoint; `?model=` is appended. `ws://` for a local server.
    pub url: String,
    pub model: String,
    pub voice: String,
    /// `OPENAI_API_KEY`, or this key. Empty: every caller gets the fallback.
    pub api_key: Secret,
    /// Connect, upgrade and session confirmation must all fit in this.
    pub connect_timeout_ms: u64,
    /// Agent calls at once; callers beyond it hear the fallback prompt.
    pub max_concurrent: u32,
    /// Longest an inbound call may last, in seconds (then a goodbye).
    pub max_call_secs: u64,
    /// Address of the UDP sockets Asterisk sends the caller's audio to.
    pub rtp_bind: String,
    /// `"first-last"`, inclusive: one port per agent call.
    pub rtp_ports: String,
    /// The agent's instructions (Spanish); `{cuenta}` becomes what it may
    /// know about the caller's account.
    pub instructions: String,
    /// Input transcription model (`""`: none).
    pub transcription_model: String,
    /// Keep both sides' transcripts in `overdue_inbound_log.transcript`.
    pub store_transcripts: bool,
    /// What a caller hears when the agent cannot take the call; may use
    /// `{saldo}` and `{corte}` of a matched client.
    pub fallback_media: Vec<String>,
    /// Played when OpenAI is lost mid-call, before the transfer (or hang-up).
    pub apology_media: Vec<String>,
}

/// The default instructions: short, Spanish, and bounded to the account.
pub const DEFAULT_INSTRUCTIONS: &str = "Eres el asistente telefónico de cobranza de un proveedor de internet en Colombia. \
Habla siempre en español, con frases cortas, amables y claras. Empieza saludando y diciendo que llamas por la factura de internet. \
{cuenta} \
Puedes explicar el saldo y la fecha de corte, registrar una promesa de pago con la herramienta registrar_promesa_de_pago \
(fecha AAAA-MM-DD entre hoy y 60 días; monto opcional en pesos), transferir a un asesor humano con transferir_a_asesor \
si la persona lo pide, y terminar la llamada con finalizar_llamada después de despedirte. \
Nunca inventes datos de la cuenta ni hables de otras personas.";

impl Default for VoiceAgentConfig {
    fn default() -> Self {
        VoiceAgentConfig {
            url: "wss://api.openai.com/v1/realtime".into(),
            model: "gpt-realtime".into(),
            voice: "marin".into(),
            api_key: Secret::default(),
            connect_timeout_ms: 3_000,
            max_concurrent: 20,
            max_call_secs: 300,
            rtp_bind: "127.0.0.1".into(),
            rtp_ports: "40000-40999".into(),
            instructions: DEFAULT_INSTRUCTIONS.into(),
            transcription_model: "gpt-4o-mini-transcribe".into(),
            store_transcripts: false,
            fallback_media: vec!["sound:morosos_natalia".into()],
            apology_media: vec!["sound:an-error-has-occurred".into()],
        }
    }
}

impl VoiceAgentConfig {
    /// `rtp_ports` as an inclusive range (checked by `validate`).
    pub fn port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let (a, b) = self.rtp_ports.split_once('-')?;
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some(a..=b)
    }
}

/// A dialplan destination for a caller who wants a person. Off while
/// `context` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub context: String,
    pub extension: String,
    pub priority: i64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            context: String::new(),
            extension: "s".into(),
            priority: 1,
        }
    }
}

impl TransferConfig {
    pub fn is_configured(&self) -> bool {
        !self.context.trim().is_empty()
    }

    /// Where `continue` sends the caller; `None` while off.
    pub fn destination(&self) -> Option<crate::ari::Destination> {
        self.is_configured().then(|| crate::ari::Destination {
            context: self.context.clone(),
            extension: self.extension.clone(),
            priority: self.priority,
        })
    }
}

/// The keypad menu of the reminder call. Off while `actions` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MenuConfig {
    /// The options prompt, played after the reminder.
    pub media: Vec<String>,
    /// How long to wait for a key after the options.
    pub wait_secs: u64,
    /// Key (`"0"`–`"9"`, `"*"`, `"#"`) → `transfer`, `repeat`, `agent`, `opt_out`.
    pub actions: BTreeMap<String, Action>,
    /// The confirmation played after `opt_out`.
    pub opt_out_media: Vec<String>,
    /// The dialplan context that hands a callee to the voice agent
    /// (`agent`): the channel continues there with the client id as the
    /// extension, and it runs `Stasis(<inbound app>,client,${EXTEN})`.
    pub agent_context: String,
}

impl Default for MenuConfig {
    fn default() -> Self {
        MenuConfig {
            media: vec!["sound:overdue-menu".into()],
            wait_secs: 8,
            actions: BTreeMap::new(),
            opt_out_media: vec!["sound:overdue-opt-out".into()],
            agent_context: "overdue-agent".into(),
        }
    }
}

impl MenuConfig {
    /// The actions by key (keys checked by `Config::validate`).
    pub fn keys(&self) -> BTreeMap<char, Action> {
        self.actions
            .iter()
            .filter_map(|(k, a)| Some((single_key(k)?, *a)))
            .collect()
    }
}

/// `"1"` → `'1'`; anything but one keypad key → `None`.
fn single_key(k: &str) -> Option<char> {
    let mut chars = k.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#' => Some(c),
        _ => None,
    }
}

/// Answering-machine detection (`AMD()` in the dialplan). Off by default:
/// it costs every person who answers a few seconds of silence.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AmdConfig {
    pub enabled: bool,
    /// The context that runs `AMD()` and returns to Stasis with the verdict
    /// (shipped in `dialplan/extensions_overdue.conf`).
    pub context: String,
    pub on_machine: OnMachine,
    /// A reminder left on a machine sets `outbound_call_is_sent`.
    pub message_counts_as_delivered: bool,
}

impl Default for AmdConfig {
    fn default() -> Self {
        AmdConfig {
            enabled: false,
            context: "overdue-amd".into(),
            on_machine: OnMachine::Hangup,
            message_counts_as_delivered: false,
        }
    }
}

impl AmdConfig {
    /// The extension of `context` to continue to: `message` waits for the
    /// machine's greeting (and its beep) to end before handing the call
    /// back, which only a message needs.
    pub fn extension(&self) -> &'static str {
        match self.on_machine {
            OnMachine::Hangup => "s",
            OnMachine::LeaveMessage => "message",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `overdue_dialer=debug,info` …
    pub level: String,
    /// Directory for a daily-rotated file, besides stdout.
    pub directory: Option<PathBuf>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".into(),
            directory: None,
        }
    }
}

impl Policy {
    /// The selection knobs of a configuration.
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            max_attempts: c.campaign.max_attempts,
            min_days_between_contacts: c.campaign.min_days_between_contacts,
            retry: c.retry_minutes.clone(),
        }
    }
}

impl Config {
    /// Defaults pointed at the in-repo simulator (its credentials) and at
    /// `database` on the MySQL server of `mysql`: what the demo, the tests
    /// and the benchmark run on.
    pub fn for_simulator(ari_url: &str, mysql: &mysql_async::Opts, database: &str) -> Config {
        let mut config = Config {
            mysql: MysqlConfig {
                host: mysql.ip_or_hostname().to_string(),
                port: mysql.tcp_port(),
                user: mysql.user().unwrap_or("root").to_owned(),
                password: Secret::new(mysql.pass().unwrap_or("")),
                database: database.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        };
        config.ari.url = ari_url.to_owned();
        config.ari.username = "asterisk".into();
        config.ari.password = Secret::new("asterisk");
        // Many of these run at once on one machine: none takes the port.
        config.metrics.listen = String::new();
        config
    }

    /// The layered sources. `file`: the `--config` path (must exist), or
    /// `None` for the default path (used only when present).
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_PATH).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_PATH))
            }
            None => {}
        }
        for (var, key) in LEGACY_ENV {
            if let Ok(value) = std::env::var(var) {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        Ok(figment.merge(Env::prefixed("OVERDUE_").split("__")))
    }

    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(&Config::figment(file)?)
    }

    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| {
            // figment's message names the key ("for key \"default.campaign.max_attempts\"")
            // and writes list positions as `.0`, where the README writes `[0]`.
            let msg = e.to_string().replace("key \"default.", "key \"");
            ConfigError(match msg.split_once("key \"") {
                Some((before, rest)) => {
                    let (key, after) = rest.split_once('"').unwrap_or((rest, ""));
                    format!("{before}key \"{}\"{after}", indexed(key))
                }
                None => msg,
            })
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail =
            |key: &str, expected: &str| Err(ConfigError(format!("{key}: expected {expected}")));
        if self.mysql.database.trim().is_empty() {
            return fail(
                "mysql.database",
                "the billing database name (or MYSQL_DATABASE)",
            );
        }
        if !(self.ari.url.starts_with("http://") || self.ari.url.starts_with("https://")) {
            return fail(
                "ari.url",
                "an http:// or https:// URL such as \"http://127.0.0.1:8088\"",
            );
        }
        let c = &self.campaign;
        // Every duration the daemon adds to a clock is bounded here, so no
        // time computation can overflow (and panic) mid-call.
        const DAY: u64 = 86_400;
        let ranges: [(&str, u64, u64, u64); 14] = [
            ("campaign.max_attempts", c.max_attempts.into(), 1, 1_000),
            (
                "campaign.max_concurrent_calls",
                c.max_concurrent_calls.into(),
                1,
                100_000,
            ),
            (
                "campaign.min_days_between_contacts",
                c.min_days_between_contacts.into(),
                0,
                3_650,
            ),
            ("campaign.ring_timeout_secs", c.ring_timeout_secs, 1, 3_600),
            ("campaign.call_timeout_secs", c.call_timeout_secs, 2, DAY),
            (
                "campaign.run_timeout_base_secs",
                c.run_timeout_base_secs,
                1,
                7 * DAY,
            ),
            (
                "campaign.run_timeout_per_client_secs",
                c.run_timeout_per_client_secs,
                0,
                DAY,
            ),
            ("campaign.poll_interval_secs", c.poll_interval_secs, 1, DAY),
            (
                "campaign.trunk_cooldown_secs",
                c.trunk_cooldown_secs,
                0,
                DAY,
            ),
            (
                "campaign.shutdown_grace_secs",
                c.shutdown_grace_secs,
                0,
                DAY,
            ),
            (
                "campaign.orphan_after_mins",
                c.orphan_after_mins,
                1,
                7 * 1_440,
            ),
            ("campaign.min_heard_secs", c.min_heard_secs, 0, 3_600),
            (
                "ari.request_timeout_secs",
                self.ari.request_timeout_secs,
                1,
                300,
            ),
            (
                "voice_agent.max_call_secs",
                self.voice_agent.max_call_secs,
                1,
                DAY,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return fail(
                    key,
                    &format!("a whole number from {min} to {max}, found {value}"),
                );
            }
        }
        let r = &self.retry_minutes;
        for (name, minutes) in [
            ("busy", r.busy),
            ("no_answer", r.no_answer),
            ("rejected", r.rejected),
            ("congestion", r.congestion),
            ("failed", r.failed),
            ("timeout", r.timeout),
            ("trunk_error", r.trunk_error),
            ("aborted", r.aborted),
            ("voicemail", r.voicemail),
        ] {
            if minutes > 366 * 1_440 {
                return fail(
                    &format!("retry_minutes.{name}"),
                    &format!("minutes from 0 to {}, found {minutes}", 366 * 1_440),
                );
            }
        }
        // Below 0.01 the pacing interval (1 / rate) stops being a sane duration.
        if !(c.calls_per_second.is_finite() && (0.01..=1_000.0).contains(&c.calls_per_second)) {
            return fail(
                "campaign.calls_per_second",
                &format!("a number from 0.01 to 1000, found {}", c.calls_per_second),
            );
        }
        let media_item = |m: &String| m.contains(':') || m == crate::rules::media::CORTE_FECHA;
        if c.media.is_empty() || !c.media.iter().all(media_item) {
            return fail(
                "campaign.media",
                "a non-empty list like [\"sound:morosos_natalia\", \"number:{saldo}\", \"{corte_fecha}\"]",
            );
        }
        if c.call_timeout_secs <= c.ring_timeout_secs {
            return fail(
                "campaign.call_timeout_secs",
                "more seconds than campaign.ring_timeout_secs (and both above 0)",
            );
        }
        for (name, hours) in [
            ("weekdays", self.window.weekdays),
            ("saturday", self.window.saturday),
            ("sunday", self.window.sunday),
        ] {
            if let Some(h) = hours {
                if h.start >= h.end {
                    return fail(&format!("window.{name}"), "start before end");
                }
            }
        }
        let va = &self.voice_agent;
        if !(va.url.starts_with("wss://") || va.url.starts_with("ws://")) {
            return fail(
                "voice_agent.url",
                "a wss:// (or ws:// for a local server) URL such as \"wss://api.openai.com/v1/realtime\"",
            );
        }
        if va.model.trim().is_empty() {
            return fail("voice_agent.model", "a model name such as \"gpt-realtime\"");
        }
        if va.port_range().is_none() {
            return fail(
                "voice_agent.rtp_ports",
                &format!(
                    "\"first-last\" UDP ports such as \"40000-40999\", found {:?}",
                    va.rtp_ports
                ),
            );
        }
        // Asterisk is told to send to this address: it must be one.
        if va
            .rtp_bind
            .parse::<std::net::IpAddr>()
            .map_or(true, |ip| ip.is_unspecified())
        {
            return fail(
                "voice_agent.rtp_bind",
                &format!(
                    "an IP address such as \"127.0.0.1\", found {:?}",
                    va.rtp_bind
                ),
            );
        }
        if !(100..=60_000).contains(&va.connect_timeout_ms) {
            return fail(
                "voice_agent.connect_timeout_ms",
                &format!(
                    "a whole number from 100 to 60000, found {}",
                    va.connect_timeout_ms
                ),
            );
        }
        if !(1..=10_000).contains(&va.max_concurrent) {
            return fail(
                "voice_agent.max_concurrent",
                &format!(
                    "a whole number from 1 to 10000, found {}",
                    va.max_concurrent
                ),
            );
        }
        for (key, media) in [
            ("voice_agent.fallback_media", &va.fallback_media),
            ("voice_agent.apology_media", &va.apology_media),
        ] {
            if media.is_empty() || !media.iter().all(media_item) {
                return fail(key, "a non-empty list like [\"sound:morosos_natalia\"]");
            }
        }
        if self.transfer.is_configured()
            && (self.transfer.extension.trim().is_empty() || self.transfer.priority < 1)
        {
            return fail(
                "transfer",
                "an extension and a priority of 1 or more with the context",
            );
        }
        let menu = &self.menu;
        for (key, action) in &menu.actions {
            if single_key(key).is_none() {
                return fail(
                    &format!("menu.actions.{key}"),
                    "one keypad key (\"0\"–\"9\", \"*\", \"#\") per action",
                );
            }
            if *action == Action::Transfer && !self.transfer.is_configured() {
                return fail(
                    &format!("menu.actions.{key}"),
                    "\"transfer\" needs a [transfer] context and extension",
                );
            }
            if *action == Action::Agent && menu.agent_context.trim().is_empty() {
                return fail(
                    "menu.agent_context",
                    "a dialplan context such as \"overdue-agent\"",
                );
            }
        }
        if !menu.actions.is_empty() {
            let opt_out = menu.actions.values().any(|a| *a == Action::OptOut);
            for (key, media, needed) in [
                ("menu.media", &menu.media, true),
                ("menu.opt_out_media", &menu.opt_out_media, opt_out),
            ] {
                if needed && (media.is_empty() || media.iter().any(|m| !m.contains(':'))) {
                    return fail(key, "a non-empty list like [\"sound:overdue-menu\"]");
                }
            }
            if !(1..=120).contains(&menu.wait_secs) {
                return fail(
                    "menu.wait_secs",
                    &format!("a whole number from 1 to 120, found {}", menu.wait_secs),
                );
            }
        }
        if self.amd.enabled && self.amd.context.trim().is_empty() {
            return fail("amd.context", "a dialplan context such as \"overdue-amd\"");
        }
        if self.trunks.is_empty() {
            return fail("trunks", "at least one [[trunks]] entry");
        }
        let mut names = BTreeMap::new();
        for (i, t) in self.trunks.iter().enumerate() {
            let key = format!("trunks[{i}]");
            if let Err(why) = crate::rules::trunks::check_endpoint_template(&t.endpoint) {
                return fail(&format!("{key}.endpoint"), &why);
            }
            if let Some(e) = t
                .health_endpoint
                .as_deref()
                .filter(|e| !e.trim().is_empty())
            {
                if let Err(why) = crate::rules::trunks::check_health_endpoint(e.trim()) {
                    return fail(&format!("{key}.health_endpoint"), &why);
                }
            }
            if t.max_channels == 0 {
                return fail(&format!("{key}.max_channels"), "at least 1");
            }
            if t.name.trim().is_empty() || names.insert(t.name.clone(), i).is_some() {
                return fail(
                    &format!("{key}.name"),
                    "a non-empty name no other trunk uses",
                );
            }
        }
        let listen = self.metrics.listen.trim();
        if !listen.is_empty() {
            match listen.parse::<std::net::SocketAddr>() {
                Err(_) => {
                    return fail(
                        "metrics.listen",
                        &format!("an address like \"127.0.0.1:9464\", or \"\" for no metrics, found {listen:?}"),
                    )
                }
                Ok(a) if !a.ip().is_loopback() && !self.metrics.allow_remote => {
                    return fail(
                        "metrics.listen",
                        &format!("a loopback address such as \"127.0.0.1:9464\" (found {a}); set metrics.allow_remote = true to serve other hosts"),
                    )
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures must return figment::Error, which is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, toml: &str) -> Result<Config, ConfigError> {
        jail.create_file("c.toml", toml).unwrap();
        Config::load(Some(Path::new("c.toml")))
    }

    #[test]
    fn defaults_then_file_then_env() {
        Jail::expect_with(|jail| {
            let c = load_in(jail, "[mysql]\ndatabase = \"billing\"\n").unwrap();
            assert_eq!(c.campaign.max_attempts, 3);
            assert_eq!(c.timezone, chrono_tz::America::Bogota);
            assert_eq!(c.campaign.media, vec!["sound:morosos_natalia"]);

            jail.set_env("OVERDUE_CAMPAIGN__MAX_ATTEMPTS", "5");
            jail.set_env("OVERDUE_MYSQL__DATABASE", "from_env");
            let c = load_in(
                jail,
                "[mysql]\ndatabase = \"billing\"\n[campaign]\nmax_attempts = 4\n",
            )
            .unwrap();
            assert_eq!(c.campaign.max_attempts, 5);
            assert_eq!(c.mysql.database, "from_env");
            Ok(())
        });
    }

    #[test]
    fn seed_script_variables_still_work() {
        Jail::expect_with(|jail| {
            jail.set_env("ASTERISK_USERNAME", "Asterisk");
            jail.set_env("ASTERISK_PASSWORD", "1234");
            jail.set_env("MYSQL_SERVER", "db.local");
            jail.set_env("MYSQL_USER", "billing");
            jail.set_env("MYSQL_PASSWORD", "s3cr3t@/x");
            jail.set_env("MYSQL_DATABASE", "isp");
            let c = load_in(jail, "").unwrap();
            assert_eq!(c.ari.username, "Asterisk");
            assert_eq!(c.ari.password.expose(), "1234");
            assert_eq!(c.mysql.host, "db.local");
            assert_eq!(c.mysql.user, "billing");
            assert_eq!(c.mysql.password.expose(), "s3cr3t@/x");
            assert_eq!(c.mysql.database, "isp");
            // OVERDUE_* wins over the legacy names.
            jail.set_env("OVERDUE_MYSQL__DATABASE", "isp2");
            assert_eq!(load_in(jail, "").unwrap().mysql.database, "isp2");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        Jail::expect_with(|jail| {
            jail.set_env("MYSQL_PASSWORD", "hunter2");
            jail.set_env("ASTERISK_PASSWORD", "ari-pass");
            jail.set_env("OPENAI_API_KEY", "sk-live-123");
            let c = load_in(jail, "[mysql]\ndatabase = \"b\"\n").unwrap();
            assert_eq!(c.voice_agent.api_key.expose(), "sk-live-123");
            let dbg = format!("{c:?}");
            assert!(
                !dbg.contains("hunter2") && !dbg.contains("ari-pass") && !dbg.contains("sk-live"),
                "{dbg}"
            );
            Ok(())
        });
    }

    /// Metrics are on, on loopback, by default; another address only
    /// when asked for on purpose; empty turns them off.
    #[test]
    fn metrics_listen_rules() {
        Jail::expect_with(|jail| {
            let db = "[mysql]\ndatabase = \"b\"\n";
            let c = load_in(jail, db).unwrap();
            assert_eq!(c.metrics.addr(), Some(([127, 0, 0, 1], 9464).into()));
            let c = load_in(jail, &format!("{db}[metrics]\nlisten = \"\"\n")).unwrap();
            assert_eq!(c.metrics.addr(), None);
            let c = load_in(jail, &format!("{db}[metrics]\nlisten = \"[::1]:9000\"\n")).unwrap();
            assert!(c.metrics.addr().is_some());
            let c = load_in(
                jail,
                &format!("{db}[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n"),
            )
            .unwrap();
            assert_eq!(c.metrics.addr(), Some(([0, 0, 0, 0], 9464).into()));
            let c = load_in(
                jail,
                &format!("{db}[[trunks]]\nname = \"t\"\nendpoint = \"Local/{{number}}@x\"\nhealth_endpoint = \"PJSIP/voip\"\n"),
            )
            .unwrap();
            assert_eq!(c.trunks[0].health_endpoint().as_deref(), Some("PJSIP/voip"));
            Ok(())
        });
    }

    fn error_of(toml: &str) -> String {
        let mut msg = String::new();
        Jail::expect_with(|jail| {
            msg = load_in(jail, toml).unwrap_err().to_string();
            Ok(())
        });
        msg
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let db = "[mysql]\ndatabase = \"b\"\n";
        let cases = [
            (format!("{db}[campaign]\nmax_atempts = 3\n"), "max_atempts"),
            (
                format!("{db}[campaign]\nmax_attempts = \"three\"\n"),
                "campaign.max_attempts",
            ),
            (
                format!("{db}[campaign]\nmax_attempts = 0\n"),
                "campaign.max_attempts",
            ),
            (format!("{db}timezone = \"America/Bogotá\"\n"), "timezone"),
            (
                format!("{db}[window]\nweekdays = {{ start = \"7am\", end = \"19:00\" }}\n"),
                "window.weekdays.start",
            ),
            (
                format!("{db}[[trunks]]\nname = \"t\"\nendpoint = \"PJSIP/voip_issabel\"\n"),
                "trunks[0].endpoint",
            ),
            (
                format!("{db}[campaign]\ncalls_per_second = 0\n"),
                "campaign.calls_per_second",
            ),
            (
                format!("{db}[campaign]\nschedule = [\"8\"]\n"),
                "campaign.schedule[0]",
            ),
            (
                format!("{db}[logging]\nformat = \"xml\"\n"),
                "logging.format",
            ),
            ("[mysql]\nhost = \"x\"\n".to_string(), "mysql.database"),
            (
                format!("{db}[[trunks]]\nname = \"t\"\nendpoint = \"Local/{{number}}@x\"\nhealth_endpoint = \"voip\"\n"),
                "trunks[0].health_endpoint",
            ),
            (
                format!("{db}[metrics]\nlisten = \"9464\"\n"),
                "metrics.listen",
            ),
            (
                format!("{db}[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
                "metrics.listen",
            ),
        ];
        for (toml, key) in cases {
            let msg = error_of(&toml);
            assert!(
                msg.contains(key),
                "error for {toml:?} does not name {key}: {msg}"
            );
        }
    }

    /// Values that would overflow a time computation (and once made call
    /// tasks panic) are refused at start, naming the key and the range.
    #[test]
    fn values_that_would_overflow_a_clock_are_refused() {
        let db = "[mysql]\ndatabase = \"b\"\n";
        let huge = "9223372036854775807";
        let cases = [
            (
                format!("[campaign]\ncall_timeout_secs = {huge}"),
                "campaign.call_timeout_secs",
            ),
            (
                format!("[campaign]\nring_timeout_secs = {huge}"),
                "campaign.ring_timeout_secs",
            ),
            (
                "[campaign]\nring_timeout_secs = 0".into(),
                "campaign.ring_timeout_secs",
            ),
            (
                format!("[campaign]\nrun_timeout_base_secs = {huge}"),
                "campaign.run_timeout_base_secs",
            ),
            (
                format!("[campaign]\nrun_timeout_per_client_secs = {huge}"),
                "campaign.run_timeout_per_client_secs",
            ),
            (
                "[campaign]\ncalls_per_second = 1e-300".into(),
                "campaign.calls_per_second",
            ),
            (
                "[campaign]\ncalls_per_second = 0.001".into(),
                "campaign.calls_per_second",
            ),
            (
                format!("[campaign]\nshutdown_grace_secs = {huge}"),
                "campaign.shutdown_grace_secs",
            ),
            (
                format!("[campaign]\npoll_interval_secs = {huge}"),
                "campaign.poll_interval_secs",
            ),
            (
                format!("[campaign]\ntrunk_cooldown_secs = {huge}"),
                "campaign.trunk_cooldown_secs",
            ),
            (
                "[campaign]\norphan_after_mins = 0".into(),
                "campaign.orphan_after_mins",
            ),
            (
                format!("[campaign]\nmin_heard_secs = {huge}"),
                "campaign.min_heard_secs",
            ),
            (
                "[ari]\nrequest_timeout_secs = 0".into(),
                "ari.request_timeout_secs",
            ),
            (
                format!("[voice_agent]\nmax_call_secs = {huge}"),
                "voice_agent.max_call_secs",
            ),
            (
                "[retry_minutes]\nbusy = 4000000000".into(),
                "retry_minutes.busy",
            ),
        ];
        for (toml, key) in cases {
            let msg = error_of(&format!("{db}{toml}\n"));
            assert!(msg.contains(key), "{toml:?} → {msg}");
            assert!(msg.contains("from"), "{toml:?} names no range: {msg}");
        }
    }

    #[test]
    fn voice_agent_keys_are_checked() {
        let db = "[mysql]\ndatabase = \"b\"\n";
        for (toml, key) in [
            (
                "[voice_agent]\nurl = \"https://api.openai.com\"",
                "voice_agent.url",
            ),
            (
                "[voice_agent]\nrtp_ports = \"40999-40000\"",
                "voice_agent.rtp_ports",
            ),
            (
                "[voice_agent]\nrtp_ports = \"40000\"",
                "voice_agent.rtp_ports",
            ),
            (
                "[voice_agent]\nrtp_bind = \"localhost\"",
                "voice_agent.rtp_bind",
            ),
            (
                "[voice_agent]\nconnect_timeout_ms = 0",
                "voice_agent.connect_timeout_ms",
            ),
            (
                "[voice_agent]\nmax_concurrent = 0",
                "voice_agent.max_concurrent",
            ),
            (
                "[voice_agent]\nfallback_media = []",
                "voice_agent.fallback_media",
            ),
            ("[voice_agent]\nmodel = \"\"", "voice_agent.model"),
            ("[transfer]\ncontext = \"agents\"\npriority = 0", "transfer"),
            ("[transfer]\nqueue = \"600\"", "queue"),
        ] {
            let msg = error_of(&format!("{db}{toml}\n"));
            assert!(msg.contains(key), "{toml:?} → {msg}");
        }
        let ok = Figment::new().merge(Toml::string(&format!(
            "{db}[voice_agent]\nrtp_ports = \"41000-41009\"\n[transfer]\ncontext = \"agents\"\nextension = \"600\"\n"
        )));
        let c = Config::from_figment(&ok).unwrap();
        assert_eq!(c.voice_agent.port_range(), Some(41000..=41009));
        assert!(c.transfer.is_configured());
        assert!(!Config::default().transfer.is_configured());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/overdue.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/overdue.toml"));
    }

    #[test]
    fn example_file_is_complete_and_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/overdue-dialer.example.toml"
        );
        let figment = Figment::new().merge(Toml::file_exact(path));
        let c = Config::from_figment(&figment).expect("example config must load");
        assert_eq!(c.mysql.database, "billing");
    }
}
