//! `mde-offboard demo`: the whole job against the built-in simulator, no tenant needed.
//!
//! The simulator starts in-process with the fleet that samples/ refers to, with the real quotas run
//! faster by a time scale, a little latency and a few passing faults; then samples/machines.csv is
//! offboarded through exactly the code path of `run`. The sample files are compiled in, so the demo
//! works from any directory.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::commands::run::{self, Job, Summary};
use crate::commands::session::Session;
use crate::error::{Error, Result};
use crate::input::{self, Source};
use crate::settings::{self, Credential, Credentials, Rate, Secret, SettingsArgs};
use mde_sim::{self as sim, Faults, Fleet, SimConfig, Simulator};

const SAMPLE_FLEET: &str = include_str!("../../samples/fleet.csv");
const SAMPLE_MACHINES: &str = include_str!("../../samples/machines.csv");
/// The device group the demo's simulated tenant denies us, to show a `forbidden` row.
const FORBIDDEN_GROUP: &str = "Tier0 Servers";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where to write the demo's results (replaced if it exists).
    #[arg(long, short, value_name = "FILE", default_value = "mde-offboard-demo.results.csv")]
    pub output: PathBuf,
    /// How much faster than real time the simulated service runs (its quotas of 100 a minute and
    /// 1,500 an hour shrink by this factor).
    #[arg(long, value_name = "X", default_value_t = 20.0)]
    pub time_scale: f64,
    /// Machines worked on at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
}

/// The real quotas, shrunk by `scale`.
pub fn scaled_rates(scale: f64) -> Vec<Rate> {
    settings::DEFAULT_RATES
        .iter()
        .map(|r| {
            let rate: Rate = r.parse().expect("the default rates parse");
            Rate { limit: rate.limit, period: rate.period.div_f64(scale) }
        })
        .collect()
}

pub async fn demo(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    if !(args.time_scale.is_finite() && args.time_scale >= 1.0) {
        return Err(Error::Usage(format!("--time-scale {}: use a number of 1 or more", args.time_scale)));
    }
    let workdir = std::env::temp_dir().join(format!("mde-offboard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)
        .map_err(|e| Error::Simulator(format!("cannot create {}: {e}", workdir.display())))?;
    let fleet_path = workdir.join("fleet.csv");
    let machines_path = workdir.join("machines.csv");
    let write = |path: &PathBuf, text: &str| {
        std::fs::write(path, text).map_err(|e| Error::Simulator(format!("cannot write {}: {e}", path.display())))
    };
    write(&fleet_path, SAMPLE_FLEET)?;
    write(&machines_path, SAMPLE_MACHINES)?;

    let config = SimConfig {
        fleet: Fleet::from_csv(&fleet_path)?,
        forbidden_groups: vec![FORBIDDEN_GROUP.to_string()],
        time_scale: args.time_scale,
        faults: Faults { seed: 7, error_503: 0.02, latency: Duration::from_millis(40), ..Faults::default() },
        ..SimConfig::default()
    };
    let simulator = Simulator::start(config).await?;
    let base = simulator.base_url();
    crate::ui::output::notice(
        "demo",
        &format!(
            "Demo: a simulated Defender for Endpoint tenant at {base}, {}x faster than real time.\n\
         Offboarding the demo's built-in sample list ({} rows); the simulator enforces the real quotas, scaled.\n",
            args.time_scale,
            SAMPLE_MACHINES.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
        ),
    );

    let mut settings = settings::resolve(&SettingsArgs::default(), &|_| None)?;
    settings.tenant_id = Some(sim::DEMO_TENANT_ID.into());
    settings.client_id = Some(sim::DEMO_CLIENT_ID.into());
    settings.authority = base.clone();
    settings.api_base = base;
    settings.rates = scaled_rates(args.time_scale);
    settings.concurrency = args.concurrency.clamp(1, 256);
    settings.retry_delay = Duration::from_millis(200);
    settings.comment = Some("mde-offboard demo {run_id}: decommissioned hardware".into());
    let credentials = Credentials {
        tenant_id: sim::DEMO_TENANT_ID.into(),
        client_id: sim::DEMO_CLIENT_ID.into(),
        credential: Credential::Secret(Secret::new(sim::DEMO_CLIENT_SECRET)),
        authority: settings.authority.clone(),
        scope: settings.scope.clone(),
    };
    let mut session = Session::open(
        &settings,
        credentials,
        crate::defender::limiter::Limiter::new(&settings.rates, settings.quota_scope),
    )?;
    let job = Job {
        comment_template: settings.comment.clone().unwrap_or_default(),
        resume: false,
        run_id: crate::files::journal::new_run_id(std::time::SystemTime::now()),
        // The demo's tenant is its own: its lock never meets a real run's.
        lock_dir: workdir.clone(),
        scan: input::scan(Source::Path(machines_path), None)?,
        output: args.output,
        overwrite: true,
        confirm: false,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        preflight: Default::default(),
        guard: Default::default(),
        summary_json: None,
        tag: None,
        settings,
    };
    let summary = run::execute(Box::new(job), &mut session, shutdown).await;
    let stats = simulator.stats();
    simulator.shutdown().await;
    let _ = std::fs::remove_dir_all(&workdir);
    let summary = summary?;
    crate::ui::output::stdout(&summary.render());
    crate::ui::output::stdout(&format!(
        "Simulator: {} offboard actions created, {} answers throttled with 429.\n\
         The sample holds malformed ids, duplicates, unknown machines, a device group the app may not touch \
         and unsupported systems on purpose: a real run with such rows exits 3.\n",
        stats.actions_created, stats.throttled
    ));
    Ok(summary)
}
