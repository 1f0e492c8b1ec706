"""KerasTuner's distributed mode: which part this process plays, and the chief's serving.

KerasTuner reads three environment variables: `KERASTUNER_TUNER_ID` (an ID
containing "chief" makes the chief), `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` (where the chief's oracle listens). The chief runs
the oracle and no trial; workers ask it for trials over gRPC and report their
results back. Here: reading the variables (`tuner_role`), failing early with
one line where KerasTuner would fail late (`check_chief_port`,
`wait_for_chief`), and the chief's loop (`serve`).
"""

import contextlib
import dataclasses
import os
import socket
import sys

from at2l_tf.errors import ConfigError
from at2l_tf.log import log

TUNER_ID_VAR = "KERASTUNER_TUNER_ID"
ORACLE_IP_VAR = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_VAR = "KERASTUNER_ORACLE_PORT"
ROLE_VARS = (TUNER_ID_VAR, ORACLE_IP_VAR, ORACLE_PORT_VAR)
# The tuner state file of the chief and of a search on one machine. KerasTuner
# names it after the tuner ID and reloads the oracle only when it finds it
# (keras-team/keras-tuner#976): without one shared name, a chief would restart a
# search made on one machine (or by a chief of another ID) from trial 0, over
# the old trials.
TUNER_STATE_FILE = "tuner0.json"


@dataclasses.dataclass(frozen=True)
class TunerRole:
    """This process's part in a distributed search (KerasTuner's environment variables).

    Attributes:
        tuner_id: `KERASTUNER_TUNER_ID`; KerasTuner makes the tuner whose ID
            contains "chief" the chief.
        ip: `KERASTUNER_ORACLE_IP`, where the chief's oracle listens.
        port: `KERASTUNER_ORACLE_PORT`.
    """

    tuner_id: str
    ip: str
    port: int

    @property
    def chief(self):
        return "chief" in self.tuner_id

    @property
    def address(self):
        return f"{self.ip}:{self.port}"

    def describe(self):
        return f"{'chief' if self.chief else 'worker'} {self.tuner_id!r} (oracle at {self.address})"


def tuner_role(environ=None):
    """The `TunerRole` the environment sets, or None for a search on one machine.

    KerasTuner runs distributed when `KERASTUNER_ORACLE_IP` is set, and then
    needs the other two; it would fail later, with a traceback, or (an ID
    alone) run a search of its own under that ID. All three or none.

    Raises:
        ConfigError: a half-set environment, an empty value, or a port that is
            not an integer in 1-65535.
    """
    environ = os.environ if environ is None else environ
    present = [v for v in ROLE_VARS if v in environ]
    if not present:
        return None
    missing = [v for v in ROLE_VARS if v not in environ]
    if missing:
        raise ConfigError(
            f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} set but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a distributed search "
            f"needs all of {', '.join(ROLE_VARS)} (or none of them, to search on one machine)"
        )
    empty = [v for v in ROLE_VARS if not environ[v].strip()]
    if empty:
        raise ConfigError(f"{empty[0]} is empty: a distributed search needs a value for each of {', '.join(ROLE_VARS)}")
    # KerasTuner uses the values as they are ("<ip>:<port>"): digits only, no spaces.
    text = environ[ORACLE_PORT_VAR]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ConfigError(f"{ORACLE_PORT_VAR} must be an integer in 1-65535, received {ORACLE_PORT_VAR}={text!r}")
    return TunerRole(tuner_id=environ[TUNER_ID_VAR], ip=environ[ORACLE_IP_VAR], port=int(text))


def check_chief_port(role):
    """Fails early, with one line, if the chief cannot listen on its address
    (gRPC would raise "Failed to bind" from inside KerasTuner)."""
    try:
        infos = socket.getaddrinfo(role.ip, role.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"the chief cannot resolve {ORACLE_IP_VAR}={role.ip} ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # Not blocked by the closing connections of an earlier chief, only by a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise ConfigError(
                f"the chief cannot listen on {role.address} ({e.strerror or e}): is another chief running "
                f"there, or is {ORACLE_IP_VAR} not an address of this machine?"
            ) from None


def wait_for_chief(role, timeout):
    """Blocks until the chief's oracle answers at `role.address`.

    The chief writes `search.json` before it starts serving, so a worker that
    got through here reads the chief's settings, not those of an earlier search.

    Raises:
        ConfigError: no answer within `timeout` seconds.
    """
    # KerasTuner's own dependency for its distributed mode, imported when used, as
    # KerasTuner does (it pulls in protobuf).
    import grpc

    channel = grpc.insecure_channel(role.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConfigError(
            f"no chief answered at {role.address} within {timeout:g} s (--wait_for_chief): start the chief "
            f"(KERASTUNER_TUNER_ID=chief), or see its summary.json if it has already finished the search"
        ) from None
    finally:
        channel.close()


def serve(tuner, reporter, role):
    """The chief's search: KerasTuner's oracle server, until every trial has ended.

    The chief runs no trial: it sees them through its oracle, whose
    `create_trial` and `end_trial` the workers call (over gRPC, one call at a
    time); the two are wrapped to log each trial's start and end and to
    rewrite `summary.json` after each.
    """
    oracle = tuner.oracle
    if finished(oracle):
        # KerasTuner's chief would serve until a worker asked for a trial (forever without one).
        log(f"{role.describe()}: the search is finished; no trial to serve")
        return
    create_trial, end_trial = oracle.create_trial, oracle.end_trial

    def watched_create_trial(tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == "RUNNING":
            _report(reporter.begin, trial, on=tuner_id)
        return trial

    def watched_end_trial(trial):
        on = next((t for t, ongoing in oracle.ongoing_trials.items() if ongoing.trial_id == trial.trial_id), None)
        end_trial(trial)
        # KerasTuner's end_trial saves the oracle before it drops the trial from the
        # ongoing ones, and a chief never saves again: a resumed search would run its
        # last trial a second time. (A tuner that runs trials saves after each.)
        oracle.save()
        _report(reporter.end, tuner, trial, on=on)

    oracle.create_trial, oracle.end_trial = watched_create_trial, watched_end_trial
    log(f"{role.describe()}: serving trials; start the workers (each its own {TUNER_ID_VAR})")
    # KerasTuner prints retries on stdout, from the server's threads: keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        tuner.search(verbose=0)  # Returns when every trial handed out has ended.


def _report(fn, *args, **kwargs):
    # Runs in the gRPC server's thread, after the oracle has recorded the call: a
    # failure to log or to write summary.json must not fail the worker's call.
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        log(f"warning: could not report a trial ({type(e).__name__}: {e}); the oracle has it")


def finished(oracle):
    """Whether the chief's oracle has every trial of `max_trials` and none to run or retry."""
    remaining = oracle.remaining_trials()
    ended = ("COMPLETED", "FAILED")
    return remaining is not None and remaining <= 0 and all(t.status in ended for t in oracle.trials.values())


__all__ = ["ROLE_VARS", "TUNER_STATE_FILE", "TunerRole", "check_chief_port", "finished", "serve", "tuner_role",
           "wait_for_chief"]
