"""Use-cases below the facade: each service takes the narrow dependencies it uses.

:class:`Services` composes them over one store and one model registry; the agent,
export and canvas receive it (never the ``Engine``), and ``engine.api.Engine``
delegates to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Settings
from engine.inference.registry import ModelRegistry
from engine.services.analysis import AnalysisService
from engine.services.annotations import AnnotationService
from engine.services.audit import AuditTrail
from engine.services.compare import CompareService
from engine.services.images import DecodeCache, ImageService
from engine.services.intake import ImageIntake
from engine.services.interactive import InteractiveService
from engine.services.priors import PriorService
from engine.services.regions import RegionService
from engine.services.sessions import SessionService
from engine.services.similar import SimilarCaseService
from engine.services.volumes import VolumeCache, VolumeService
from engine.store import Store


@dataclass
class Services:
    """Every use-case service of one engine, over one store and one model registry."""

    settings: Settings
    store: Store
    models: ModelRegistry
    images: ImageService
    intake: ImageIntake
    annotations: AnnotationService
    analysis: AnalysisService
    interactive: InteractiveService
    similar: SimilarCaseService
    regions: RegionService
    sessions: SessionService
    volumes: VolumeService
    priors: PriorService
    compare: CompareService
    audit: AuditTrail

    @classmethod
    def open(cls, settings: Settings) -> Services:
        """Open the store and wire the services together."""
        store = Store.open(settings.home, use_keyring=settings.use_keyring)
        store.interrupt_stale_agent_runs()  # runs a dead process left "running" (like requeue_stale_jobs)
        models = ModelRegistry(settings)
        images = ImageService(store, DecodeCache(max_bytes=settings.decode_cache_bytes), limits=settings.limits,
                              max_file_bytes=settings.max_image_file_bytes)
        annotations = AnnotationService(store)
        analysis = AnalysisService(store, models, images)
        interactive = InteractiveService(store, models, images, annotations, store.embeddings)
        similar = SimilarCaseService(settings, store, models, images, analysis)
        volumes = VolumeService(store, VolumeCache(settings.volume_cache_mb * 1024 * 1024), limits=settings.limits,
                                annotations=annotations)
        return cls(settings=settings, store=store, models=models, images=images,
                   intake=ImageIntake(images, analysis), annotations=annotations, analysis=analysis,
                   interactive=interactive, similar=similar,
                   regions=RegionService(store, models, images, analysis, interactive, similar, annotations),
                   sessions=SessionService(store, images, interactive, settings.retention, volumes),
                   volumes=volumes, priors=PriorService(store, settings.prior_count),
                   compare=CompareService(store, images, analysis), audit=AuditTrail(store.audit, settings))

    def close(self) -> None:
        """Release the reference library, models and database connections."""
        self.similar.close()
        self.models.unload()
        self.store.close()
