"""HostSyncReport's recorder (``patches/host_sync_warnings.py``): only torch's sync warnings are taken, every
other warning reaches the handler it would have reached, and the warning state is as before afterwards."""

from __future__ import annotations

import warnings

import pytest

from vlm_lightning.patches.host_sync_warnings import SyncWarningRecorder


def _sync() -> None:
    warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)


def test_other_warnings_reach_the_previous_handler_and_the_state_is_restored() -> None:
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        filters, handler = list(warnings.filters), warnings.showwarning
        recorder = SyncWarningRecorder()
        recorder.start()
        assert recorder.recording
        for _ in range(3):
            _sync()  # one line, three times: each occurrence counted
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        caught = recorder.stop()
        assert not recorder.recording
        assert warnings.filters == filters and warnings.showwarning is handler
        assert [message for _, _, message in caught] == ["called a synchronizing CUDA operation"] * 3
        assert {(filename, lineno) for filename, lineno, _ in caught} == {
            (__file__, _sync.__code__.co_firstlineno + 1)
        }
        assert shown == ["an unrelated warning"]  # as without the recorder
        _sync()  # after stop: shown as usual again
        assert shown[-1] == "called a synchronizing CUDA operation"


def test_errors_raised_for_other_warnings_stay_errors_and_a_second_start_is_refused() -> None:
    recorder = SyncWarningRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recorder.start()
        try:
            _sync()  # recorded, not raised
            with pytest.raises(UserWarning, match="unrelated"):
                warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
            with pytest.raises(RuntimeError, match="already recording"):
                recorder.start()
        finally:
            assert len(recorder.stop()) == 1
        with pytest.raises(UserWarning):
            _sync()
    assert recorder.stop() == []  # stopping twice is harmless
