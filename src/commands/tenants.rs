//! The results of a list of several tenants: one results file with a `tenant_id` column, merged from the
//! tenants' own results files in `<results stem>.tenants/` (see [`crate::commands::run`]'s tenants).
//!
//! `track`, `cancel` and `tag` given such a file work on each tenant's own results file, each in a session
//! signed in to its tenant (with its own app when the run's tenants file named one: the run keeps the apps,
//! paths and ids only, in `apps.toml` beside the tenants' results), at most `run.tenant_concurrency`
//! tenants at once; then the one file is merged again ([`remerge`]), so it says what each tenant's file
//! says. A tenant whose run could not start has no file of its own: its rows stay as they are. `report`
//! reads the one file as it is (the `tenant_id` column is one more column).

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use crate::error::{Error, Result};
use crate::files::results::{ResultsFile, Rewrite};
use crate::settings::tenants::TenantsFile;
use crate::settings::{self, Settings, SettingsArgs};

/// The column that names each row's tenant, last in the results of several tenants.
pub const TENANT_COLUMN: &str = "tenant_id";
/// The apps of the run's tenants file, as the run resolved them, beside the tenants' results.
const APPS: &str = "apps.toml";

/// One tenant's own results.
#[derive(Clone, Debug)]
pub struct TenantResults {
    pub tenant: String,
    pub results: PathBuf,
}

/// Where the tenants' lists and results go: `<results stem>.tenants/` beside the results file.
pub fn tenants_dir(results: &Path) -> PathBuf {
    results.with_extension("tenants")
}

/// The results file of `tenant` in `dir`.
pub fn tenant_results(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}.results.csv"))
}

/// The tenants of a results file of several tenants that have results of their own, in the file's order;
/// `None` for the results of one tenant (no `tenant_id` column). Streams the file.
pub fn tenants_of(path: &Path) -> Result<Option<Vec<TenantResults>>> {
    let file = ResultsFile::open(path)?;
    let Some(column) = file.headers().iter().position(|h| h == TENANT_COLUMN) else { return Ok(None) };
    let dir = tenants_dir(path);
    let (mut seen, mut tenants) = (HashSet::new(), Vec::new());
    for record in file.records()? {
        let record = record?;
        let tenant = record.cells.get(column).unwrap_or_default();
        if seen.insert(tenant.to_string()) {
            let results = tenant_results(&dir, tenant);
            // A tenant name is a GUID or a domain (the run wrote it): never a path.
            if crate::settings::tenants::normalise_tenant(tenant).as_deref() == Some(tenant) && results.is_file() {
                tenants.push(TenantResults { tenant: tenant.to_string(), results });
            }
        }
    }
    Ok(Some(tenants))
}

/// Replaces each tenant's rows in the results file at `path` with its own results file's rows, atomically;
/// the rows of a tenant without a file of its own stay. Columns are matched by name.
pub fn remerge(path: &Path) -> Result<()> {
    let file = ResultsFile::open(path)?;
    let headers = file.headers().clone();
    let column = file.column(TENANT_COLUMN)?;
    let dir = tenants_dir(path);
    let mut out = Rewrite::start(path, &headers)?;
    let mut done: HashSet<String> = HashSet::new();
    for record in file.records()? {
        let record = record?;
        let tenant = record.cells.get(column).unwrap_or_default().to_string();
        let own = tenant_results(&dir, &tenant);
        let valid = crate::settings::tenants::normalise_tenant(&tenant).as_deref() == Some(tenant.as_str());
        if !(valid && own.is_file()) {
            out.write(&record.cells)?;
            continue;
        }
        if !done.insert(tenant.clone()) {
            continue;
        }
        let own = ResultsFile::open(&own)?;
        let at: Vec<Option<usize>> =
            headers.iter().map(|h| own.headers().iter().position(|o| o == h && h != TENANT_COLUMN)).collect();
        for row in own.records()? {
            let row = row?;
            let cells = at.iter().enumerate().map(|(i, at)| match at {
                _ if i == column => tenant.as_str(),
                Some(at) => row.cells.get(*at).unwrap_or_default(),
                None => "",
            });
            out.write(cells)?;
        }
    }
    out.commit()
}

/// Keeps the apps of the run's tenants file beside the tenants' results (ids and paths, no secret), for
/// the commands that follow; a run without one removes what an earlier run kept.
pub fn keep_apps(dir: &Path, apps: Option<&TenantsFile>) -> Result<()> {
    let path = dir.join(APPS);
    match apps {
        Some(apps) => crate::files::write_atomically(&path, apps.to_toml().as_bytes()),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::write(path, "remove it", e)),
            _ => Ok(()),
        },
    }
}

/// The settings of each tenant: `base` signed in to the tenant, with its own app when `apps` names it.
pub fn settings_for(tenant: &str, args: &SettingsArgs, base: &Settings, apps: &TenantsFile) -> Result<Settings> {
    let mut settings = if apps.names(tenant) {
        let resolved = settings::resolve(&apps.args_for(tenant, args), &|k| std::env::var(k).ok())?;
        for warning in &resolved.warnings {
            tracing::warn!("tenant {tenant}: {warning}");
        }
        resolved
    } else {
        base.clone()
    };
    settings.tenant_id = Some(tenant.to_string());
    Ok(settings)
}

/// Runs `work` for each tenant of the results file at `path` (its results file and settings), at most
/// `run.tenant_concurrency` at once, each stopping on the one signal; then merges the file again. Returns
/// each tenant's outcome, in the file's order.
pub async fn for_each<T, F, Fut>(
    path: &Path,
    tenants: Vec<TenantResults>,
    args: &SettingsArgs,
    base: &Settings,
    shutdown: impl Future<Output = ()>,
    work: F,
) -> Result<Vec<(String, Result<T>)>>
where
    T: Send + 'static,
    F: Fn(TenantResults, Settings, SignalFuture) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    // A command on the one file: never beside another command writing it.
    let _lock = crate::files::lock::ResultsLock::acquire(path)?;
    let apps_file = tenants_dir(path).join(APPS);
    let apps = if apps_file.is_file() { TenantsFile::load(&apps_file)? } else { TenantsFile::default() };
    // Every tenant's settings before any call.
    let settings: Vec<Settings> =
        tenants.iter().map(|t| settings_for(&t.tenant, args, base, &apps)).collect::<Result<_>>()?;
    let (stop, stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(base.tenant_concurrency));
    let mut tasks = Vec::with_capacity(tenants.len());
    for (tenant, settings) in tenants.into_iter().zip(settings) {
        let (slots, mut waiting) = (slots.clone(), stopped.clone());
        let name = tenant.tenant.clone();
        let job = work(tenant, settings, signal(stopped.clone()));
        tasks.push((
            name,
            tokio::spawn(async move {
                let _slot = tokio::select! {
                    slot = slots.acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = waiting.wait_for(|s| *s) => return Err(Error::Interrupted),
                };
                job.await
            }),
        ));
    }
    let all = async {
        let mut done = Vec::with_capacity(tasks.len());
        for (name, task) in tasks {
            done.push((name, task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))));
        }
        done
    };
    tokio::pin!(all, shutdown);
    let done = tokio::select! {
        done = &mut all => done,
        _ = &mut shutdown => {
            let _ = stop.send(true);
            all.await
        }
    };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || remerge(&path))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    Ok(done)
}

/// The one signal, as each tenant's command awaits it.
pub type SignalFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn signal(mut stopped: watch::Receiver<bool>) -> SignalFuture {
    Box::pin(async move {
        let _ = stopped.wait_for(|s| *s).await;
    })
}

/// The exit code of several tenants' commands: the most serious of theirs.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    codes.into_iter().max().unwrap_or(crate::error::exit_code::OK)
}

/// Says how each tenant's command went (`render` for one that ran) and gives the most serious exit code.
pub fn each_said<T>(
    done: Vec<(String, Result<T>)>,
    render: impl Fn(&T) -> Option<String>,
    code: impl Fn(&T) -> u8,
) -> u8 {
    let mut codes = Vec::with_capacity(done.len());
    for (tenant, result) in done {
        match result {
            Ok(t) => {
                if let Some(text) = render(&t) {
                    crate::ui::output::stdout(&format!("Tenant {tenant}:\n{text}"));
                }
                codes.push(code(&t));
            }
            Err(e) => {
                crate::ui::output::error(&format!("tenant {tenant}: {e}"));
                codes.push(e.exit_code());
            }
        }
    }
    worst(codes)
}

/// `track` of the results of several tenants: each tenant's results tracked in its own session.
pub async fn track(
    args: &crate::commands::track::TrackArgs,
    settings: &Settings,
    tenants: Vec<TenantResults>,
    shutdown: impl Future<Output = ()>,
) -> Result<u8> {
    let options = args.options();
    let done = for_each(&args.results, tenants, &args.settings(), settings, shutdown, move |t, s, signal| async move {
        crate::commands::track::track_file(&t.results, &s, None, options, signal).await
    })
    .await?;
    Ok(each_said(done, |s| Some(s.render()), |s| s.exit_code()))
}

/// `cancel` of the results of several tenants: each tenant's open actions cancelled in its own session.
pub async fn cancel(
    args: &crate::commands::cancel::CancelArgs,
    settings: &Settings,
    tenants: Vec<TenantResults>,
    shutdown: impl Future<Output = ()>,
) -> Result<u8> {
    let done = for_each(&args.results, tenants, &args.settings(), settings, shutdown, |t, s, signal| {
        let mut args = args.clone();
        args.results = t.results;
        async move { crate::commands::cancel::command(args, s, signal).await }
    })
    .await?;
    Ok(each_said(done, |_| None, |code| *code))
}

/// `tag` of the results of several tenants: each tenant's machines tagged in its own session.
pub async fn tag(
    args: &crate::commands::tag::TagArgs,
    settings: &Settings,
    tenants: Vec<TenantResults>,
    shutdown: impl Future<Output = ()>,
) -> Result<u8> {
    let done = for_each(&args.results, tenants, &args.settings(), settings, shutdown, |t, s, signal| {
        let mut args = args.clone();
        args.results = t.results;
        async move { crate::commands::tag::command(args, s, signal).await }
    })
    .await?;
    Ok(each_said(done, |_| None, |code| *code))
}
