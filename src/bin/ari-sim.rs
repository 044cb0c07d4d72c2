//! `ari-sim`: the in-repo Asterisk ARI simulator as a program, for trying
//! the daemon by hand. `overdue-dialer demo` runs the same simulator in
//! process; `run` and `once` never start it. Its externalMedia channels
//! send and take real RTP on loopback, as Asterisk's do.

use std::time::Duration;

use clap::Parser;
use overdue_dialer::sim::{SimConfig, Simulator};

#[derive(Parser)]
#[command(
    about = "A simulated Asterisk 22 ARI on a loopback port (the lab's dialplan: the last digit picks the callee)"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8088)]
    port: u16,
    #[arg(long, default_value = "asterisk")]
    username: String,
    #[arg(long, default_value = "asterisk")]
    password: String,
    /// Multiplies every simulated duration (0.1 = ten times faster).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// How long answering callees ring first, in milliseconds.
    #[arg(long, default_value_t = 0)]
    answer_delay_ms: u64,
    /// Length of the prompt `sound:morosos_natalia` (es_MX), in milliseconds.
    #[arg(long, default_value_t = 4380)]
    prompt_ms: u64,
    /// Every callee answers and stays on (load tests), whatever the last digit.
    #[arg(long)]
    all_answer: bool,
    /// A call sent with `continue` to a context other than the lab's
    /// `agents` is hung up by it after this many milliseconds (scaled);
    /// without it the call waits there, as in a queue nobody answers.
    #[arg(long)]
    continue_hangup_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = SimConfig {
        username: args.username,
        password: args.password,
        time_scale: args.time_scale,
        answer_delay: Duration::from_millis(args.answer_delay_ms),
        every_callee: args
            .all_answer
            .then_some(overdue_dialer::sim::Callee::Answers {
                hangs_up_after: Duration::from_secs(3600),
            }),
        continue_hangup_after: args.continue_hangup_ms.map(Duration::from_millis),
        ..SimConfig::default()
    };
    let mut config = config;
    if let Some(s) = config.sounds.get_mut("morosos_natalia") {
        s.duration = Duration::from_millis(args.prompt_ms);
    }
    let sim = match Simulator::start(config, args.port).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{}: {e}", args.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("ARI simulator on {} (Ctrl-C to stop)", sim.url());
    let _ = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    std::process::ExitCode::SUCCESS
}
