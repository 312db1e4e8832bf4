"""The monitor's side channel (transport.sidechannel): answers, refusals, timeouts."""

import socket
import time

import pytest

from transport.sidechannel import SideChannel, SideChannelError, ask, ask_many


def test_side_channel_answers_refuses_and_times_out():
    server = SideChannel("127.0.0.1", "secret")
    server.handle("echo", lambda req: {"got": req["x"]})
    server.handle("boom", lambda req: 1 / 0)
    server.start()
    # a listening socket nobody serves: like a stopped rank, it accepts connections and never answers
    mute = socket.create_server(("127.0.0.1", 0))
    try:
        peer = {"rank": 3, "address": server.address, "port": server.port, "token": "secret"}
        assert ask(peer, "echo", 2.0, x=7) == {"got": 7}
        with pytest.raises(SideChannelError, match="ZeroDivisionError"):
            ask(peer, "boom", 2.0)
        with pytest.raises(SideChannelError, match="rank 3"):
            ask({**peer, "token": "wrong"}, "echo", 1.0, x=1)
        silent = {"rank": 5, "address": "127.0.0.1", "port": mute.getsockname()[1], "token": "x"}
        t0 = time.monotonic()
        answers = ask_many([peer, silent], "echo", 0.5, x=2)
        assert time.monotonic() - t0 < 3.0
        assert answers[3] == {"got": 2} and isinstance(answers[5], SideChannelError)
        assert "no answer within 0.5 s" in str(answers[5])
    finally:
        mute.close()
        server.stop()
