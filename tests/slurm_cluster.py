"""A real single-node Slurm for the tests: Debian's slurm-wlm (slurmctld, slurmd), slurmdbd on a private MariaDB so
that ``sacct`` answers, and munge for authentication (Slurm 22.05 has no simpler one), every daemon started from a
temporary folder with its own configuration, ports and sockets, and stopped afterwards.

``.ci/run`` installs the packages where they are missing (root and apt-get); elsewhere :func:`missing` says what is
absent and the tests that need a cluster skip with that reason. Slurm's daemons must run as root here (slurmd starts
the jobs; SlurmUser is root), so does the cluster.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from nnunet_mtl.recipes.launch import LIVE_STATES  # the states of a job that has not ended, as the launcher reads them

PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "squeue", "scancel", "sinfo",
            "mariadbd", "mariadb-install-db", "mariadb")
SBIN = ("/usr/sbin", "/sbin")
CLUSTER = "nnunetmtl"


class SlurmStartError(RuntimeError):
    """The test cluster did not start (a daemon exited, did not come up in time, or its setup failed): the machine,
    not the code under test."""


def which(program: str) -> str | None:
    return shutil.which(program) or next((f"{d}/{program}" for d in SBIN if os.access(f"{d}/{program}", os.X_OK)),
                                         None)


def missing() -> str | None:
    """Why no cluster can start here (None: it can): the programs that are not installed, or not root."""
    absent = [p for p in PROGRAMS if which(p) is None]
    if absent:
        return (f"Slurm is not installed ({', '.join(absent)} missing; .ci/run installs Debian's slurm-wlm, slurmdbd, "
                f"munge and mariadb-server)")
    if os.geteuid() != 0:
        return "a test Slurm needs root (slurmd starts the jobs as their user)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One node (this machine, all its CPUs), one partition ``debug``, accounting through slurmdbd.
    ``env`` is what a client command needs (SLURM_CONF)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    # ---------------------------------------------------------------------------------------------- start and stop
    def start(self, timeout: float = 90) -> "SlurmCluster":
        try:
            self._munge()
            self._database()
            self._slurm(timeout)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            self.stop()
            raise SlurmStartError(f"{type(e).__name__}: {e}") from e
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if which("scancel") and (self.root / "slurm.conf").exists() and self.processes:
            subprocess.run([which("scancel"), "--full", "-u", "root"], env=self.env, capture_output=True, timeout=30)
            # scancel returns before the jobs' steps have ended; slurmd must outlive them, or they are orphaned
            deadline = time.time() + 30
            while time.time() < deadline and self._client("squeue", "-h", "-o", "%i").stdout.strip():
                time.sleep(0.5)
        for p in reversed(self.processes):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.processes):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.processes = []

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {path})"

    def _start(self, argv: list, name: str, env: dict | None = None) -> subprocess.Popen:
        out = open(self.root / f"{name}.out", "ab")
        p = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                             start_new_session=True)
        self.processes.append(p)
        return p

    def _wait(self, what: str, ready, timeout: float, logs=()) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            for p in self.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) while waiting for {what}: "
                                       + " | ".join(self.log(n) for n in logs))
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}: "
                           + " | ".join(self.log(n) for n in logs))

    # ---------------------------------------------------------------------------------------------------- munge
    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(parents=True, mode=0o700)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = d / "munge.socket"
        self._start([which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--pid-file={d / 'munged.pid'}", f"--log-file={self.root / 'munged.log'}",
                     f"--seed-file={d / 'munged.seed'}"], "munged")
        self._wait("munged's socket", self.munge_socket.exists, 20, ["munged"])

    # ------------------------------------------------------------------------------ MariaDB, slurmdbd, the cluster
    def _database(self) -> None:
        data = self.root / "mariadb"
        self.db_socket = self.root / "mariadb.sock"
        self.db_port = free_port()
        subprocess.run([which("mariadb-install-db"), f"--datadir={data}", "--user=root", "--auth-root-authentication-"
                        "method=socket", "--skip-test-db"], check=True, capture_output=True, timeout=120)
        self._start([which("mariadbd"), "--no-defaults", f"--datadir={data}", f"--socket={self.db_socket}",
                     f"--port={self.db_port}", "--bind-address=127.0.0.1", "--user=root",
                     f"--log-error={self.root / 'mariadb.log'}", f"--pid-file={self.root / 'mariadb.pid'}",
                     "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900",
                     "--skip-log-bin"], "mariadbd")
        self._wait("MariaDB's socket", self.db_socket.exists, 60, ["mariadb"])
        self.db_password = os.urandom(8).hex()
        sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
        subprocess.run([which("mariadb"), f"--socket={self.db_socket}", "-u", "root", "-e", sql], check=True,
                       capture_output=True, timeout=30)

    def _slurm(self, timeout: float) -> None:
        host = socket.gethostname().split(".")[0]
        self.host = host
        dbd_port, ctld_port, slurmd_port = free_port(), free_port(), free_port()
        cpus = os.cpu_count() or 1
        memory_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.8)
        for d in ("state", "spool"):
            (self.root / d).mkdir()
        auth = f"AuthInfo=socket={self.munge_socket}"
        (self.root / "slurm.conf").write_text("\n".join([
            f"ClusterName={CLUSTER}", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}", "AuthType=auth/munge", auth,
            "CredType=cred/munge", f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={dbd_port}", f"AccountingStoragePass={self.munge_socket}",  # munge for slurmdbd
            "JobCompType=jobcomp/none", "MpiDefault=none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "SlurmctldTimeout=30", "SlurmdTimeout=30", "MinJobAge=600",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        dbd = self.root / "slurmdbd.conf"  # found next to slurm.conf ($SLURM_CONF's folder)
        dbd.write_text("\n".join([
            f"DbdHost={host}", "DbdAddr=127.0.0.1", f"DbdPort={dbd_port}", "SlurmUser=root", "AuthType=auth/munge",
            auth,
            f"LogFile={self.root / 'slurmdbd.log'}", f"PidFile={self.root / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={self.db_port}",
            "StorageUser=slurm", f"StoragePass={self.db_password}", "StorageLoc=slurm_acct_db", ""]))
        dbd.chmod(0o600)
        self._start([which("slurmdbd"), "-D"], "slurmdbd")
        self._wait("slurmdbd", lambda: self._client("sacctmgr", "-n", "list", "cluster").returncode == 0, timeout,
                   ["slurmdbd"])
        added = self._client("sacctmgr", "-i", "add", "cluster", CLUSTER)
        if added.returncode != 0 and "already exists" not in added.stdout + added.stderr:
            raise RuntimeError(f"sacctmgr add cluster: {added.stdout} {added.stderr}")
        self._start([which("slurmctld"), "-D", "-i"], "slurmctld")
        self._start([which("slurmd"), "-D", "-N", host], "slurmd")
        self._wait("the node to be idle", lambda: self._client("sinfo", "-h", "-o", "%T").stdout.strip() == "idle",
                   timeout, ["slurmctld", "slurmd"])

    def _client(self, program: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([which(program), *args], env=self.env, capture_output=True, text=True, timeout=30)

    # ------------------------------------------------------------------------------------------------ the jobs
    def states(self, job_ids) -> dict[str, str]:
        """{job id: state} from sacct ("CANCELLED by 0" -> CANCELLED). By id: a job cancelled before it started
        has no start time, and sacct's time window leaves it out."""
        out = self._client("sacct", "-X", "-n", "-P", "-o", "JobID,State", *[f"-j{j}" for j in job_ids])
        return {job: state.split()[0] for job, state in (line.split("|", 1) for line in out.stdout.splitlines())}

    def wait_until_ended(self, job_ids, timeout: float) -> None:
        """Until sacct reports every job of ``job_ids`` ended (squeue can be empty a moment before slurmdbd has
        recorded the last job's end)."""
        job_ids = [str(j) for j in job_ids]

        def ended():
            states = self.states(job_ids)
            return len(states) == len(job_ids) and not LIVE_STATES & set(states.values())
        self._wait("the jobs to end", ended, timeout, ["slurmctld"])

