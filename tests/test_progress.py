"""The epoch progress bar counts computed steps and bounds how far the host runs ahead."""

from __future__ import annotations

from deinforeg_jax.reporting import ProgressBar


class _Loss:
  """A dispatched step's loss: ready once the fake device has computed it."""

  def __init__(self, value: float, device: list):
    self.value, self.ready, self.device = value, False, device

  def is_ready(self) -> bool:
    return self.ready

  def block_until_ready(self):
    if not self.ready:
      self.device.append(self.value)  # the host waited for this step
      self.ready = True
    return self

  def __float__(self) -> float:
    return self.value


def test_the_bar_counts_only_computed_steps_and_waits_beyond_max_ahead():
  waited: list[float] = []
  bar = ProgressBar(total=10, description="epoch 1/1", max_ahead=2)
  losses = [_Loss(float(i), waited) for i in range(6)]
  bar.update({"total_loss": losses[0]})
  bar.update({"total_loss": losses[1]})
  assert bar._bar.n == 0 and waited == []  # two steps in flight: nothing computed, no wait
  bar.update({"total_loss": losses[2]})
  assert waited == [0.0] and bar._bar.n == 1  # a third: the host waits for the oldest
  losses[1].ready = True  # the device finished step 1 meanwhile
  bar.update({"total_loss": losses[3]})
  assert waited == [0.0] and bar._bar.n == 2  # counted without waiting
  assert bar._bar.postfix == "loss=1.0000"
  bar.close()
  assert waited == [0.0, 2.0, 3.0] and bar._bar.n == 4  # close waits for every dispatched step
