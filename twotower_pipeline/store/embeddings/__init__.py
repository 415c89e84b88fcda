"""The runtime's embedding collections (SPEC §5), published as one unit through a journal.

Each run's vectors are kept in collections of their own, `<live name>__run_<run_id>`, written
through a slice commit (complete or invisible) and never changed afterwards. Publishing a run makes
the two live collections copies of that run's pair:

1. under the publish lease (one publisher at a time), finish or undo a publish a crash left half
   done (below);
2. check that both of the run's collections are committed and hold the counts they were written with;
3. write down the intent in the journal (`ecosystem_meta.two_tower_publish`: state `publishing`,
   the target run and the run that was live);
4. copy each into a staging collection with a unique index on its key, then rename both stagings
   over the live collections (`renameCollection(dropTarget=True)`);
5. verify the live pair: counts, one run id in both, unit vectors of one width, a unique key;
6. write down the outcome: state `live`, the new live run and the one before it.

If the verification fails, the last verified pair is put back (from its own run collections) and
the publish fails. If anything dies between 3 and 6, the journal still says `publishing`: the next
publish, rollback or `twotower embeddings-status --recover` rolls it forward to the target (its
sources are intact, whatever the crash did to the stagings or the live collections) or, if that
cannot be verified, back to the run that was live. On MongoDB a rename within a database is
atomic and a metadata operation; on the embedded server it copies documents and a crash can leave
the target empty or doubled, which the journal repairs the same way. Between the two renames a
reader of both collections may see the new users with the old offers (milliseconds on MongoDB,
the copy time on the embedded server); every document carries its `run_id` so a ranking can
refuse to mix them, and the journal says which run is live.

The publisher is split by verb over the journal they share (`journal.py`): keeping a run's own
vectors (`run_vectors.py`), publishing, rolling back and recovering (`publish.py`), refreshing the
live run (`refresh.py`), verifying the live collections (`verify.py`, with the one check of vectors
that everything written goes through) and pruning old runs (`prune.py`); `publisher.py` puts them
together as `Publisher`.
"""

from twotower_pipeline.store.embeddings.journal import (BUCKETS, HISTORY, JOURNAL, KEEP_RUNS, NORM_TOLERANCE,
                                                        REFRESH_MARK, RUN_ID_PATTERN, RUN_MARK, STAGING_MARK,
                                                        TOWERS, PublishError, Tower, check_run_id)
from twotower_pipeline.store.embeddings.publisher import Publisher
from twotower_pipeline.store.embeddings.run_vectors import VectorSnapshot, customer_buckets, snapshot_name
from twotower_pipeline.store.embeddings.verify import LiveReport, vector_problems

__all__ = ["BUCKETS", "HISTORY", "JOURNAL", "KEEP_RUNS", "NORM_TOLERANCE", "REFRESH_MARK", "RUN_ID_PATTERN",
           "RUN_MARK", "STAGING_MARK", "TOWERS", "LiveReport", "PublishError", "Publisher", "Tower", "VectorSnapshot",
           "check_run_id", "customer_buckets", "snapshot_name", "vector_problems"]
