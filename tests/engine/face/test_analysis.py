import cv2
import numpy as np
import pytest

from engine.face.analysis import MIN_FACE_PX, PortraitError, analyze_portrait


def test_landmarks_lie_on_the_face_inside_the_frame(portrait):
    lm = portrait.landmarks
    assert lm.shape == (478, 3) and portrait.frame.shape == (512, 512, 3)
    assert (lm[:, :2] > 0).all() and (lm[:, :2] < 512).all()
    # the nose tip is between the eyes horizontally and below them
    assert lm[33, 0] < lm[1, 0] < lm[263, 0] and lm[1, 1] > lm[33, 1]


def test_framing_of_a_large_photo_keeps_head_and_shoulders(portrait):
    big = cv2.resize(portrait.frame, (1600, 1200))  # wide photo: must be cropped square around the face
    p = analyze_portrait(big, size=256)
    assert p.frame.shape == (256, 256, 3)
    face_w = np.ptp(p.landmarks[:, 0])
    assert 0.25 < face_w / 256 < 0.5
    cx, cy = p.landmarks[:, :2].mean(0)
    assert abs(cx - 128) < 30 and cy < 140  # face centred, slightly above the middle


def test_paste_back_puts_the_frame_where_it_came_from(portrait):
    big = cv2.resize(portrait.frame, (1600, 1200))
    p = analyze_portrait(big, size=256)
    back = p.paste_back(p.frame)
    x0, y0, x1, y1 = p.face_box
    diff = np.abs(back[y0:y1, x0:x1].astype(int) - big[y0:y1, x0:x1].astype(int))
    assert diff.mean() < 6  # only resampling blur, no shift
    assert np.array_equal(back[:, :5], big[:, :5])  # outside the frame the photo is untouched


def test_missing_file(tmp_path):
    with pytest.raises(PortraitError, match="does not exist"):
        analyze_portrait(tmp_path / "me.jpg")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "me.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(PortraitError, match="me.jpg is not a JPEG, PNG or WebP image"):
        analyze_portrait(bad)


def test_no_face(rng):
    noise = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    with pytest.raises(PortraitError, match="no face found"):
        analyze_portrait(noise)


def test_face_too_small(portrait):
    small = cv2.resize(portrait.frame, (200, 200), interpolation=cv2.INTER_AREA)
    with pytest.raises(PortraitError, match=f"at least {MIN_FACE_PX} px"):
        analyze_portrait(small)


def test_several_faces_pick_the_largest_and_say_so(portrait):
    small = cv2.resize(portrait.frame, (340, 340), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, :512] = portrait.frame
    canvas[100:440, 540:880] = small
    p = analyze_portrait(canvas)
    assert any("animating the largest" in n for n in p.notes)
    assert p.face_box[0] < 512  # the big face, on the left


def test_bad_size(portrait):
    with pytest.raises(PortraitError, match="--size"):
        analyze_portrait(portrait.frame, size=100)


def test_concurrent_analyses_each_get_their_own_answer(portrait, rng):
    """Six photos at once, one of them faceless, as six uploads would arrive: before the detector was locked
    this crashed the process (SIGSEGV in mediapipe), poisoned the graph for every later photo, or gave the
    faceless photo another thread's face."""
    from concurrent.futures import ThreadPoolExecutor

    noise = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    photos = [portrait.frame] * 5 + [noise]

    def analyse(photo):
        try:
            return analyze_portrait(photo, size=256).face_box
        except PortraitError as err:
            return str(err)

    for _ in range(3):
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(analyse, photos))
        assert all(box == results[0] and isinstance(box, tuple) for box in results[:5]), results
        assert "no face found in the photo" in results[5]
    assert analyze_portrait(portrait.frame, size=256).face_box == results[0]  # the graph still works


def test_decompression_bombs_are_refused_from_the_header():
    from engine.face.analysis import MAX_IMAGE_PIXELS, decode_image

    ok, png = cv2.imencode(".png", np.zeros((5000, 4000, 3), np.uint8))  # 20 MP of black: a ~60 KB file
    assert ok and len(png) < 200_000 and 5000 * 4000 > MAX_IMAGE_PIXELS
    with pytest.raises(PortraitError, match="5000 px|4000x5000 px.*megapixels"):
        decode_image(png.tobytes(), "the upload")


def test_a_damaged_header_is_named_without_internals():
    from engine.face.analysis import decode_image

    with pytest.raises(PortraitError, match="header is damaged") as caught:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "the upload")
    assert "0x" not in str(caught.value) and "BytesIO" not in str(caught.value)
