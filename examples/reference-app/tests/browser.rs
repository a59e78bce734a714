//! End to end in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
//! drives the app over HTTPS on loopback — sign-in with the magic link and TOTP (enrolment
//! started with its own button), a note, the assistant run on the injected note, the held
//! request approved by staff after a fresh second factor, and the audit viewer; then every
//! settings flow (recovery codes, a new authenticator, a new e-mail address, disabling the
//! account). A screenshot of
//! each page goes to the test's target directory (and, with `REFERENCE_APP_SCREENSHOTS=docs`, to
//! `docs/screenshots/` for the walkthrough).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reference_app::Config;

/// chromedriver, which also finds Chromium: `$CHROMEDRIVER`, Debian's paths, or `PATH`. A
/// missing browser stops the test with one line naming the fix.
fn chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("chromedriver"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for candidate in [
        PathBuf::from("/usr/bin/chromedriver"),
        PathBuf::from("/usr/lib/chromium/chromedriver"),
    ]
    .into_iter()
    .chain(on_path)
    {
        if candidate.is_file() {
            return candidate;
        }
    }
    testkit::missing_prerequisite(
        "the browser test needs Chromium and its WebDriver: `sudo apt-get install chromium \
         chromium-driver` (Debian/Ubuntu), or set CHROMEDRIVER. `.ci/run` installs them when \
         missing.",
    );
}

/// The browser's time zone: India's, five and a half hours east of UTC all year.
const READER_ZONE: &str = "Asia/Kolkata";

/// Every time on the page reads in the browser's zone, to the second: its text is its
/// `datetime` (UTC) moved 5 h 30 min east and labelled with the offset. The page's inline
/// script does this; a Content-Security-Policy that blocked it would leave UTC text.
async fn assert_local_times(browser: &Client) {
    let times = browser
        .find_all(Locator::Css("time[datetime]"))
        .await
        .unwrap();
    assert!(!times.is_empty(), "no time on the page");
    let offset = time::UtcOffset::from_hms(5, 30, 0).unwrap();
    for t in times {
        let iso = t.attr("datetime").await.unwrap().unwrap();
        let at = time::OffsetDateTime::parse(&iso, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .to_offset(offset);
        let expected = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC+05:30",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        );
        assert_eq!(t.text().await.unwrap(), expected, "{iso}");
    }
}

struct Shots {
    dirs: Vec<PathBuf>,
}

impl Shots {
    fn new() -> Self {
        let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")];
        if std::env::var("REFERENCE_APP_SCREENSHOTS").as_deref() == Ok("docs") {
            dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"));
        }
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        Self { dirs }
    }

    async fn take(&self, browser: &Client, name: &str) {
        let png = browser.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        for d in &self.dirs {
            std::fs::write(d.join(format!("{name}.png")), &png).unwrap();
        }
    }
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn source(browser: &Client) -> String {
    browser.source().await.unwrap()
}

/// The page once it contains `needle` (a submitted form's answer may still be loading when the
/// click returns), or the last page seen after 10 seconds.
async fn wait_for(browser: &Client, needle: &str) -> String {
    let mut page = String::new();
    for _ in 0..100 {
        page = source(browser).await;
        if page.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page
}

/// Signs in through the real pages: request a link, open it, confirm, enrol TOTP.
async fn sign_in(
    browser: &Client,
    app: &reference_app::App,
    base: &str,
    workspace: &str,
    email: &str,
    shots: Option<&Shots>,
) -> Vec<u8> {
    browser.goto(base).await.unwrap();
    if let Some(s) = shots {
        s.take(browser, "01-sign-in").await;
    }
    browser
        .find(Locator::Css(&format!(
            "#workspace option[value='{workspace}']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(browser, "#email", email).await;
    let before = app.outbox_links().len();
    click(browser, "form[action='/api/auth/link'] button").await;
    assert!(
        wait_for(browser, "Check your email")
            .await
            .contains("Check your email")
    );
    if let Some(s) = shots {
        s.take(browser, "02-check-your-email").await;
    }
    let mut link = None;
    for _ in 0..300 {
        let links = app.outbox_links();
        if links.len() > before {
            link = links.last().cloned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    browser.goto(&link.expect("a sign-in link")).await.unwrap();
    if let Some(s) = shots {
        s.take(browser, "03-confirm-link").await;
    }
    click(browser, "form[action='/api/auth/link/confirm'] button").await;
    let page = wait_for(browser, "Set up your authenticator").await;
    assert!(page.contains("Set up your authenticator"), "{page}");
    // Starting the enrolment is a POST of its own; the page then shows the QR code and key.
    click(browser, "form[action='/api/auth/totp/enrol'] button").await;
    let page = wait_for(browser, "Key: <code>").await;
    assert!(page.contains("Key: <code>"), "{page}");
    if let Some(s) = shots {
        s.take(browser, "04-enrol-authenticator").await;
    }
    let key = common::shown_key(&page);
    // Re-opening the page shows the same pending enrolment: it does not replace the seed the
    // person may have scanned already.
    browser.refresh().await.unwrap();
    let again = wait_for(browser, "Key: <code>").await;
    assert_eq!(common::shown_key(&again), key, "{again}");
    let seed = common::shown_seed(&again);
    fill(browser, "#code", &common::code(&seed, 0)).await;
    click(browser, "form[action='/api/auth/totp'] button").await;
    // Signed in with both factors: members land on their notes, staff on the approval queue.
    let landing = if workspace == "ops" {
        "Approval queue"
    } else {
        "Notes of"
    };
    let page = wait_for(browser, landing).await;
    assert!(page.contains(landing), "{page}");
    seed
}

/// The app on a loopback HTTPS port and headless Chromium driving it.
struct Harness {
    app: std::sync::Arc<reference_app::App>,
    base: String,
    browser: Client,
    driver: tokio::process::Child,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn launch() -> Self {
        let driver_path = chromedriver();
        let app_port = common::free_port();
        // Under the target directory, so `cargo clean` removes it.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reference-app-browser-{}", uuid::Uuid::new_v4()));
        let base = format!("https://localhost:{app_port}");
        let config = Config::from_args(
            [
                "--data-dir",
                &dir.display().to_string(),
                "--base-url",
                &base,
            ]
            .into_iter()
            .map(str::to_owned),
        )
        .unwrap()
        .unwrap();
        let app = reference_app::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
            .await
            .unwrap();
        let app = std::sync::Arc::new(app);
        let server = {
            let app = app.clone();
            tokio::spawn(async move { app.serve(listener).await })
        };

        let driver_port = common::free_port();
        // The browser's time zone is not the server's (UTC): pages must show times in it.
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={driver_port}"))
            .env("TZ", READER_ZONE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let webdriver = format!("http://127.0.0.1:{driver_port}");
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                       "--disable-dev-shm-usage", "--window-size=1200,900"]}),
        );
        let mut browser = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(c) => {
                    browser = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let browser = browser.expect("chromedriver started a Chromium session");
        Self {
            app,
            base,
            browser,
            driver,
            server,
        }
    }

    async fn close(mut self) {
        self.browser.close().await.unwrap();
        self.driver.kill().await.unwrap();
        self.server.abort();
    }
}

#[tokio::test]
async fn the_demo_in_headless_chromium() {
    let harness = Harness::launch().await;
    let (app, base, browser) = (&harness.app, harness.base.as_str(), &harness.browser);
    let shots = Shots::new();

    // Alice: sign-in, notes, a new note, the assistant on the injected note.
    sign_in(browser, app, base, "acme", "alice@acme.test", Some(&shots)).await;
    let page = wait_for(browser, "Notes of Acme Corp").await;
    assert!(
        page.contains("Notes of Acme Corp") && page.contains("Q3 budget"),
        "{page}"
    );
    fill(browser, "#title", "Board meeting").await;
    fill(browser, "#body", "Prepare the Q4 plan.").await;
    fill(browser, "#new-phone", "+1 555 0142").await;
    click(browser, "form[action='/notes'][method='post'] button").await;
    assert!(
        wait_for(browser, "Board meeting")
            .await
            .contains("Board meeting")
    );
    shots.take(browser, "05-notes").await;
    browser.goto(&format!("{base}/assistant")).await.unwrap();
    fill(browser, "#prompt", "Summarise all my notes").await;
    click(browser, "form[action='/assistant'] button").await;
    let page = wait_for(browser, "is waiting for approval").await;
    assert!(page.contains("is waiting for approval"), "{page}");
    shots.take(browser, "06-assistant-held").await;
    click(browser, "form[action='/api/auth/sign-out'] button").await;
    wait_for(browser, "Email me a sign-in link").await;

    // Sam (staff): sign-in with TOTP, the approval queue behind a stated reason, approve.
    sign_in(browser, app, base, "ops", "sam@ops.test", None).await;
    browser
        .goto(&format!("{base}/staff/approvals"))
        .await
        .unwrap();
    // The workspace picker lists acme first; the reason goes in the form's POST.
    fill(browser, "#reason", "Reviewing the assistant queue").await;
    click(browser, "form[action='/staff/visit'] button").await;
    let page = wait_for(browser, "Pending in acme").await;
    assert!(
        page.contains("exfil@attacker.test") && page.contains("/to (untrusted)"),
        "{page}"
    );
    shots.take(browser, "07-approval-queue").await;
    click(browser, "form[action$='/approve'] button").await;
    let page = wait_for(browser, "Approved.").await;
    let url = browser.current_url().await.unwrap();
    assert!(
        page.contains("Approved. send_email ran."),
        "{url}: {}",
        page.split("<main>").nth(1).unwrap_or(&page)
    );
    // The same visit: the audit viewer opens on acme without another grant.
    browser.goto(&format!("{base}/staff/audit")).await.unwrap();
    let page = source(browser).await;
    assert!(
        page.contains("chain verified") && page.contains("agent.tool_approved"),
        "{page}"
    );
    assert_local_times(browser).await;
    shots.take(browser, "08-audit-viewer").await;
    click(browser, "form[action='/api/auth/sign-out'] button").await;
    wait_for(browser, "Email me a sign-in link").await;

    // Bob: every settings flow. (One test: a process holds one app, as it holds one
    // cross-tenant authority.)
    settings_flows(&harness, &shots).await;
    harness.close().await;
}

fn notices_to(app: &reference_app::App, to: &str) -> Vec<String> {
    app.outbox_messages()
        .into_iter()
        .filter(|(address, _)| address == to)
        .map(|(_, subject)| subject)
        .collect()
}

/// Every settings flow through the real pages, as a person would click them: new recovery
/// codes, replacing the authenticator, changing the e-mail address, disabling the account.
async fn settings_flows(harness: &Harness, shots: &Shots) {
    let (app, base, browser) = (&harness.app, harness.base.as_str(), &harness.browser);
    let old_seed = sign_in(browser, app, base, "acme", "bob@acme.test", None).await;

    // New recovery codes: shown once, ten of them, and a notice to the account.
    browser.goto(&format!("{base}/settings")).await.unwrap();
    click(browser, "form[action='/settings/recovery-codes'] button").await;
    let page = wait_for(browser, "Your recovery codes").await;
    let codes: Vec<&str> = page
        .split("<li><code>")
        .skip(1)
        .filter_map(|c| c.split('<').next())
        .collect();
    assert_eq!(codes.len(), 10, "{page}");
    assert!(codes.iter().all(|c| c.len() >= 16), "{codes:?}");
    shots.take(browser, "09-recovery-codes").await;
    assert!(
        notices_to(app, "bob@acme.test")
            .contains(&"New recovery codes were made for your account".to_owned())
    );

    // Replacing the authenticator: the new key, shown again as it was on a reload, then
    // confirmed with a code from it.
    browser
        .goto(&format!("{base}/settings/authenticator"))
        .await
        .unwrap();
    click(browser, "form[action='/api/auth/totp/replace'] button").await;
    let page = wait_for(browser, "Key: <code>").await;
    let key = common::shown_key(&page);
    browser.refresh().await.unwrap();
    let again = wait_for(browser, "Key: <code>").await;
    assert_eq!(common::shown_key(&again), key);
    let new_seed = common::shown_seed(&again);
    assert_ne!(new_seed, old_seed);
    fill(browser, "#code", &common::code(&new_seed, 0)).await;
    click(
        browser,
        "form[action='/api/auth/totp/replace/confirm'] button",
    )
    .await;
    let page = wait_for(browser, "Your authenticator was replaced").await;
    assert!(page.contains("Your authenticator was replaced"), "{page}");

    // Changing the e-mail address: a link to the new address, confirmed in this browser.
    fill(browser, "#email", "robert@acme.test").await;
    click(browser, "form[action='/api/auth/email'] button").await;
    let page = wait_for(browser, "A confirmation link was sent").await;
    assert!(page.contains("A confirmation link was sent"), "{page}");
    let link = app
        .outbox_links()
        .into_iter()
        .rev()
        .find(|l| l.contains("/settings/email/confirm"))
        .expect("a confirmation link");
    browser.goto(&link).await.unwrap();
    let page = wait_for(browser, "Confirm your new e-mail address").await;
    assert!(page.contains("Confirm your new e-mail address"), "{page}");
    click(browser, "form[action='/api/auth/email/confirm'] button").await;
    let page = wait_for(browser, "Your e-mail address was changed").await;
    assert!(page.contains("<code>robert@acme.test</code>"), "{page}");
    shots.take(browser, "10-settings").await;

    // Disabling the account: another word is refused back to the page, which says why; the
    // word signs out, and the session no longer opens a page.
    fill(browser, "#confirm", "yes").await;
    click(browser, "form[action='/api/auth/account/disable'] button").await;
    let page = wait_for(browser, "Type the word disable").await;
    assert!(page.contains("Nothing was changed"), "{page}");
    fill(browser, "#confirm", "disable").await;
    click(browser, "form[action='/api/auth/account/disable'] button").await;
    let page = wait_for(browser, "Your account is disabled").await;
    assert!(page.contains("Your account is disabled"), "{page}");
    browser.goto(&format!("{base}/notes")).await.unwrap();
    let page = source(browser).await;
    assert!(!page.contains("Notes of"), "{page}");

    // The notices, each to the address it belongs to.
    let old = notices_to(app, "bob@acme.test");
    for subject in [
        "Your authenticator was replaced",
        "A change of your e-mail address was requested",
        "Your e-mail address was changed",
    ] {
        assert!(old.contains(&subject.to_owned()), "{subject}: {old:?}");
    }
    assert!(notices_to(app, "robert@acme.test").contains(&"Your account was disabled".to_owned()));
}
