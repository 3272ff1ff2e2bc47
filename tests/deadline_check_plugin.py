"""``pytest -p tests.deadline_check_plugin``: every ``RelayService`` of the run keeps its
deadline heap from the first watched connection on and checks each ``next_deadline()``
against a scan of its handlers (``RelayService.check_deadlines``)."""

from hyco_proto.service import router

router.RelayService.check_deadlines = True
router._HEAP_FROM = 1
