//! A rotating keysync killed at each step boundary (abort at a failpoint, like SIGKILL), then
//! run again: exactly one promotion per rotation, no provider key left unaccounted for, and
//! the current key always one that validates. Needs `--features failpoints`.
#![cfg(feature = "failpoints")]

mod support;

use support::{Cli, DevServer};

#[tokio::test]
async fn every_step_boundary_resumes_to_exactly_one_promotion() {
    for point in ["put_after_data", "after_pending", "after_promote"] {
        for run in 0..3 {
            let server = DevServer::start();
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display().to_string();
            let cli = Cli::new(&server, &server.root_token, dir.path());
            let mint = format!(
                "n=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n; echo id-$n >> {d}/minted; printf '{{\"api_key\": \"sk-crash-%s-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-%s\"}}' $n $n"
            );
            let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
            let cfg = dir.path().join("keysync.toml");
            std::fs::write(
                &cfg,
                format!(
                    "[rotation]\nadopt_after = \"0s\"\n[keys.svc.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.svc.rotation]\ninterval = \"30d\"\n"
                ),
            )
            .unwrap();
            let cfg = cfg.display().to_string();
            cli.run_with_stdin(&["put", "svc"], "sk-crash-initial-xxxxxxxxxxxxxxxx");

            let out = cli
                .command(&["--config", &cfg, "rotate", "svc", "--force"])
                .env("KEYSYNC_FAILPOINT", point)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{point}: the failpoint should have killed keysync");
            let status = cli.json(&["status", "svc"]);
            if point == "put_after_data" {
                // Crashed before the new version was recorded: the intent is the trace.
                assert!(
                    status[0]["interrupted_rotation"].as_str().is_some_and(|i| !i.is_empty()),
                    "{point}: the crash leaves a trace: {status}"
                );
            }
            // Consumers still have a current key with data.
            let current = cli.json(&["get", "svc"]);
            assert!(current["version"].as_u64().is_some(), "{point}: no current key after the crash");

            // The next run (not forced: the crashed rotation must be finished, not repeated).
            let (code, stdout, stderr) = cli.run(&["--config", &cfg, "rotate", "svc"]);
            assert_eq!(code, 0, "{point} run {run}: {stdout}{stderr}");
            let status = cli.json(&["status", "svc"]);
            assert_eq!(status[0]["latest_version"], 2, "{point} run {run}: exactly one new version: {status}");
            assert_eq!(status[0]["current"]["version"], 2, "{point} run {run}: promoted once: {status}");
            assert_eq!(status[0]["previous"]["version"], 1);
            assert!(status[0]["pending"].is_null());
            assert!(status[0]["interrupted_rotation"].is_null(), "{point}: the trace is cleared once finished");
            let minted = std::fs::read_to_string(dir.path().join("minted")).unwrap_or_default();
            assert_eq!(minted, "id-1\n", "{point}: one key minted, and it is the current one");
            assert!(!dir.path().join("revoked").exists(), "{point}: nothing needed revoking");
            let got = cli.json(&["get", "svc"]);
            assert_eq!(got["fields"]["key_id"], "id-1");
        }
    }
}
