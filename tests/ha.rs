//! Several Vault addresses and a Vault that is not there yet: a dead first address is skipped
//! for the next one, and `keysync run` started while Vault is down waits (not ready) and
//! renders once Vault answers, instead of exiting.

mod support;

use std::time::Duration;
use support::faults::http_get;
use support::scenario::Scenario;
use support::{eventually, Agent, Cli, DevServer, Proxy};

fn dead_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scheme = if support::raft_tls() { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

#[tokio::test]
async fn two_addresses_with_the_first_one_dead_work_through_the_second() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dead = dead_address();
    let config = d.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\naddress = [\"{dead}\", \"{}\"]\ntimeout = \"5s\"\n[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{}/openai.key\"\n",
            server.addr,
            d.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, d);
    // VAULT_ADDR must not be what makes it work: point it at the dead address too.
    cli.addr = dead.clone();
    cli.secrets.push("sk-ha-aaaaaaaaaaaaaaaaaaaaaaaaaaaa".into());
    let (code, _, stderr) =
        cli.run_with_stdin(&["--config", cfg, "put", "openai"], "sk-ha-aaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("switched to another Vault address"), "the switch is logged: {stderr}");
    let listed = cli.ok(&["--config", cfg, "list"]);
    assert!(listed.contains("openai"), "{listed}");
    let mut agent = Agent::start(&config, &dead, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(Duration::from_secs(30)), Some(0), "{}", agent.log_text());
    assert_eq!(std::fs::read_to_string(d.join("openai.key")).unwrap().trim(), "sk-ha-aaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    // Both dead: the error names the address tried last and says it cannot be reached.
    let both_dead = d.join("dead.toml");
    std::fs::write(&both_dead, format!("[vault]\naddress = \"{dead}, {}\"\ntimeout = \"3s\"\n", dead_address()))
        .unwrap();
    let (code, _, stderr) = cli.run(&["--config", both_dead.to_str().unwrap(), "list"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach Vault"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_while_vault_is_down_waits_not_ready_then_renders() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let key = "sk-wait-aaaaaaaaaaaaaaaaaaaaaaaaa";
    writer
        .put(
            &keysync::store::KeyName::parse("openai").unwrap(),
            keysync::store::KeyData::new(keysync::secret::Secret::new(key)),
            &keysync::store::PutOptions { promote: true, reason: "test".into(), keep_fields: false },
        )
        .await
        .unwrap();
    let proxy = Proxy::start(&server.addr).await;
    proxy.set_down(true);
    let sc = Scenario::new(&server).via(&proxy.addr).toml("[vault]\ntimeout = \"2s\"").sink("openai", "openai.key");
    let (d, listen) = (sc.d(), sc.listen.clone().unwrap());
    let mut agent = sc.run();
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 503).await,
        "the agent serves /readyz (not ready) while it waits: {}",
        agent.log_text()
    );
    assert!(
        eventually(Duration::from_secs(10), || agent.log_text().contains("Vault is not available yet; waiting")).await,
        "{}",
        agent.log_text()
    );
    // It tries again (after 1 s, then 2 s) instead of exiting.
    let waits = || agent.log_text().matches("Vault is not available yet; waiting").count();
    assert!(eventually(Duration::from_secs(10), || waits() >= 3).await, "{}", agent.log_text());
    assert!(agent.child.try_wait().unwrap().is_none(), "run did not exit: {}", agent.log_text());
    assert!(!d.join("openai.key").exists());
    let (_, why) = http_get(&listen, "/readyz");
    assert!(why.contains("not logged in"), "{why}");
    proxy.set_down(false);
    let up = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(40), || std::fs::read_to_string(d.join("openai.key"))
            .is_ok_and(|t| t.trim() == key))
        .await,
        "{}",
        agent.log_text()
    );
    assert!(eventually(Duration::from_secs(5), || http_get(&listen, "/readyz").0 == 200).await);
    assert!(up.elapsed() < Duration::from_secs(35), "rendered {:?} after Vault came up", up.elapsed());
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
}
